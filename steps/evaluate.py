"""Evaluate: base vs fine-tuned on the held-out test split, same prompts, same greedy
decoding. Per-example answer metrics, perplexity of the references, refusals on
unanswerable questions, latency, an optional LLM judge, paired bootstrap confidence
intervals for every difference, a per-source breakdown, the forgetting guard's
general questions, and an HTML/Markdown report."""

from __future__ import annotations

import logging
from pathlib import Path
from statistics import mean
from typing import Any

import mlflow
import numpy as np
from zenml import get_step_context, step

from qaforge.config import EvaluationConfig, PromptConfig
from qaforge.general_data import GeneralQuestion, read_jsonl
from qaforge.hardware import Machine, decide
from qaforge.judge import pairwise, rubric_scores
from qaforge.metrics import Scored, compare, contains_any, is_refusal, mean_gain, score_answers
from qaforge.modeling import generate_answers, load_for_inference, reference_nll, time_single_requests
from qaforge.prompting import build_messages
from qaforge.records import EvalReport, EvalRow, QADataset, QAPair, TrainedModel
from qaforge.report import write_report

log = logging.getLogger(__name__)


def test_pairs(data: QADataset, cfg: EvaluationConfig) -> list[QAPair]:
    return data.test[: cfg.max_examples] if cfg.max_examples else data.test


def as_served(pairs: list[QAPair], prompt: PromptConfig) -> list[list[dict[str, str]]]:
    """Each pair's conversation up to its question, as the server builds it."""
    return [build_messages(p.question, prompt.system_prompt, p.history) for p in pairs]


def answer_and_score(
    model: Any, tokenizer: Any, pairs: list[QAPair], prompt: PromptConfig, cfg: EvaluationConfig
) -> tuple[Scored, dict[str, float]]:
    """Scored answers, plus model-level numbers: refusal rates, speed and latency."""
    conversations = as_served(pairs, prompt)
    references = [p.answer for p in pairs]
    generation = generate_answers(model, tokenizer, conversations, cfg.max_new_tokens, cfg.batch_size)
    nll = reference_nll(model, tokenizer, conversations, references, cfg.batch_size)
    scored = score_answers(generation.answers, references, nll)
    extra = {"tokens_per_s": generation.new_tokens / generation.seconds}
    refused = [is_refusal(a) for a in generation.answers]
    unanswerable = [p.kind == "unanswerable" for p in pairs]
    if any(unanswerable):
        extra["refusal_rate"] = mean(r for r, u in zip(refused, unanswerable) if u)
    if not all(unanswerable):
        extra["false_refusal_rate"] = mean(r for r, u in zip(refused, unanswerable) if not u)
    if cfg.latency_samples:
        timed = time_single_requests(model, tokenizer, conversations[: cfg.latency_samples], cfg.max_new_tokens)
        ms = [1000 * g.seconds for g in timed]
        extra |= {
            "latency_p50_ms": float(np.percentile(ms, 50)),
            "latency_p95_ms": float(np.percentile(ms, 95)),
            "latency_tokens_per_s": sum(g.new_tokens for g in timed) / sum(g.seconds for g in timed),
        }
    return scored, extra


def answer_general(
    model: Any, tokenizer: Any, questions: list[GeneralQuestion], prompt: PromptConfig, cfg: EvaluationConfig
) -> tuple[list[str], np.ndarray]:
    """Answers to the forgetting guard's questions, as served (same system prompt), and
    whether each states an accepted answer."""
    conversations = [build_messages(q.question, prompt.system_prompt) for q in questions]
    answers = generate_answers(model, tokenizer, conversations, cfg.general_max_new_tokens, cfg.batch_size).answers
    return answers, np.array([float(contains_any(a, q.accept)) for a, q in zip(answers, questions)])


def by_source(pairs: list[QAPair], scored: dict[str, Scored], metric: str) -> dict[str, dict[str, float]]:
    sources: dict[str, list[int]] = {}
    for i, pair in enumerate(pairs):
        sources.setdefault(pair.source, []).append(i)
    return {
        source: {"n": float(len(idx))} | {label: s.value(metric, np.array(idx)) for label, s in scored.items()}
        for source, idx in sorted(sources.items())
    }


def evaluate(
    model_dirs: dict[str, str], pairs: list[QAPair], prompt: PromptConfig, cfg: EvaluationConfig
) -> EvalReport:
    """Score each labelled model directory (the first is the one compared against the
    others' baseline: {"candidate": ..., "base": ...}); models load one at a time."""
    general = read_jsonl(cfg.general_qa, GeneralQuestion) if cfg.general_qa else []
    scored: dict[str, Scored] = {}
    metrics: dict[str, dict[str, float]] = {}
    general_answers: dict[str, list[str]] = {}
    general_correct: dict[str, np.ndarray] = {}
    for label, path in model_dirs.items():
        model, tokenizer = load_for_inference(path, cfg)
        scored[label], extra = answer_and_score(model, tokenizer, pairs, prompt, cfg)
        metrics[label] = scored[label].summary() | extra
        if general:
            general_answers[label], general_correct[label] = answer_general(model, tokenizer, general, prompt, cfg)
            metrics[label]["general_accuracy"] = float(general_correct[label].mean())
        del model
        log.info("%s: %s", label, {k: round(v, 4) for k, v in metrics[label].items()})
    a, b = list(model_dirs)[:2]
    comparisons = compare(scored[a], scored[b], (a, b), cfg.bootstrap_samples, cfg.confidence)
    if general:
        comparisons.append(
            mean_gain("general_accuracy", general_correct[a], general_correct[b], (a, b),
                      cfg.bootstrap_samples, cfg.confidence)
        )
    report = EvalReport(
        metrics=metrics,
        comparisons=comparisons,
        by_source=by_source(pairs, scored, cfg.primary_metric),
        rows=[
            EvalRow(
                question=p.question,
                reference=p.answer,
                source=p.source,
                kind=p.kind,
                answers={label: scored[label].predictions[i] for label in model_dirs},
            )
            for i, p in enumerate(pairs)
        ],
        general=[
            EvalRow(
                question=q.question,
                reference=q.answer,
                source=f"general/{q.topic}",
                kind="general",
                answers={label: general_answers[label][i] for label in model_dirs},
            )
            for i, q in enumerate(general)
        ],
    )
    return judge(report, cfg) if cfg.judge else report


def judge(report: EvalReport, cfg: EvaluationConfig) -> EvalReport:
    """Add the LLM judge's rubric scores (with a CI on the difference) and its pairwise
    preferences between the first two models."""
    rows = report.rows[: cfg.judge.max_examples] if cfg.judge.max_examples else report.rows
    questions, references = [r.question for r in rows], [r.reference for r in rows]
    labels = list(report.metrics)
    comparisons, metrics = list(report.comparisons), {k: dict(v) for k, v in report.metrics.items()}
    pairwise_result = None
    if "rubric" in cfg.judge.modes:
        means: dict[str, np.ndarray] = {}
        for label in labels:
            scores = rubric_scores(questions, references, [r.answers[label] for r in rows], cfg.judge)
            means[label] = np.array([mean(s.values()) for s in scores])
            metrics[label]["judge"] = float(means[label].mean())
            for criterion in cfg.judge.criteria:
                metrics[label][f"judge_{criterion}"] = mean(s[criterion] for s in scores)
        comparisons.append(
            mean_gain("judge", means[labels[0]], means[labels[1]], (labels[0], labels[1]),
                      cfg.bootstrap_samples, cfg.confidence)
        )
    if "pairwise" in cfg.judge.modes:
        pairwise_result = pairwise(
            questions,
            references,
            [r.answers[labels[0]] for r in rows],
            [r.answers[labels[1]] for r in rows],
            cfg.judge,
            (labels[0], labels[1]),
        )
        metrics[labels[0]]["judge_win_rate"] = pairwise_result.wins / pairwise_result.n
        metrics[labels[1]]["judge_win_rate"] = pairwise_result.losses / pairwise_result.n
    return report.model_copy(update={"metrics": metrics, "comparisons": comparisons, "pairwise": pairwise_result})


def metrics_table(metrics: dict[str, dict[str, float]]) -> str:
    labels = list(metrics)
    names = list(dict.fromkeys(n for values in metrics.values() for n in values))
    lines = [f"{'metric':<24}" + "".join(f"{label:>12}" for label in labels)]
    lines += [
        f"{n:<24}" + "".join(f"{metrics[label][n]:>12.4f}" if n in metrics[label] else f"{'':>12}" for label in labels)
        for n in names
    ]
    return "\n".join(lines)


def log_report(report: EvalReport, report_dir: Path) -> None:
    for label, values in report.metrics.items():
        mlflow.log_metrics({f"eval/{label}/{name}": value for name, value in values.items()})
    for c in report.comparisons:
        mlflow.log_metrics(
            {f"eval/gain/{c.metric}": c.gain, f"eval/gain/{c.metric}_low": c.low, f"eval/gain/{c.metric}_high": c.high}
        )
    for name, rows in (("answers", report.rows), ("general", report.general)):
        if rows:
            table: dict[str, list[str]] = {
                "question": [r.question for r in rows],
                "reference": [r.reference for r in rows],
                "source": [r.source for r in rows],
            }
            for label in report.metrics:
                table[label] = [r.answers[label] for r in rows]
            mlflow.log_table(data=table, artifact_file=f"eval/{name}.json")
    mlflow.log_dict(report.model_dump(mode="json"), "eval/report.json")
    mlflow.log_artifacts(str(report_dir), "report")


def comparisons_table(report: EvalReport) -> str:
    return "\n".join(
        f"{c.metric:<18} {c.a} - {c.b}: {c.gain:+.4f}  {round(100 * c.confidence)}% CI [{c.low:+.4f}, {c.high:+.4f}]"
        for c in report.comparisons
    )


@step(experiment_tracker=True)
def evaluate_step(
    data: QADataset, trained: TrainedModel, prompt: PromptConfig, evaluation: EvaluationConfig
) -> EvalReport:
    compute = decide(Machine.detect(), evaluation.device, evaluation.precision)
    mlflow.log_params({"evaluation.compute": str(compute), "evaluation.quantization": evaluation.quantization.value})
    report = evaluate(
        {"candidate": trained.merged_dir, "base": trained.base_model_dir},
        test_pairs(data, evaluation),
        prompt,
        evaluation,
    )
    run_name = get_step_context().pipeline_run.name
    out_dir = Path(evaluation.report_dir).resolve() / run_name
    paths = write_report(
        report, trained, out_dir, title=run_name, primary_metric=evaluation.primary_metric,
        examples=evaluation.examples_in_report,
    )
    log_report(report, out_dir)
    print(metrics_table(report.metrics))
    print(comparisons_table(report))
    print(f"Report: {paths['html']}")
    return report
