"""Evaluation: every model it is given (the candidate, the base, the production
version) answers the held-out questions with the same prompts and greedy decoding.
Per-question answer metrics, perplexity of the references, refusals on unanswerable
questions, latency, the forgetting guard's general questions, an optional LLM judge,
and paired bootstrap intervals of the candidate's gain over each other model, over
resampled questions and over resampled documents.

Answers of a model that does not change between runs (the base, a registered
version) are cached, keyed by the model, the questions and the generation settings,
so a retrain generates only the candidate's.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Any

import numpy as np
from pydantic import BaseModel

from qaforge.config import EvaluationConfig, PromptConfig
from qaforge.evaluation.judge import pairwise, rubric_scores
from qaforge.evaluation.metrics import Scored, compare, contains_any, mean_gain, score_answers
from qaforge.fsutil import write_atomic
from qaforge.general_data import GeneralQuestion, read_jsonl
from qaforge.mlflow_model import load_model_and_tokenizer
from qaforge.modeling import generate_answers, reference_nll, time_single_requests
from qaforge.prompting import build_messages
from qaforge.records import EvalReport, EvalRow, ModelLabel, QADataset, QAPair
from qaforge.refusal import is_refusal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelRef:
    """A model to evaluate: a local model folder or an MLflow model URI (`runs:/...`,
    `models:/name/version`). `identity` names weights that never change (the base
    model, a logged model), so that their answers can be reused from the cache: a
    registered version has the identity it had as a candidate, so production is not
    asked again what it already answered."""

    location: str
    identity: str | None = None


class ModelAnswers(BaseModel):
    """What one model produced for the evaluation questions: all that scoring needs."""

    answers: list[str]
    nll: list[tuple[float, int]]
    extra: dict[str, float]
    general: list[str] = []


def test_pairs(data: QADataset, cfg: EvaluationConfig) -> list[QAPair]:
    return data.test[: cfg.max_examples] if cfg.max_examples else data.test


def as_served(pairs: list[QAPair], prompt: PromptConfig) -> list[list[dict[str, str]]]:
    """Each pair's conversation up to its question, as the server builds it."""
    return [build_messages(p.question, prompt.system_prompt, p.history) for p in pairs]


def generate_all(
    model: Any, tokenizer: Any, pairs: list[QAPair], general: list[GeneralQuestion], prompt: PromptConfig,
    cfg: EvaluationConfig,
) -> ModelAnswers:
    """Answers, reference perplexities, refusal rates, speed and latency, and the
    answers to the forgetting guard's questions, as served (same system prompt)."""
    conversations = as_served(pairs, prompt)
    generation = generate_answers(model, tokenizer, conversations, cfg.max_new_tokens, cfg.batch_size)
    nll = reference_nll(model, tokenizer, conversations, [p.answer for p in pairs], cfg.batch_size)
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
    general_answers = generate_answers(
        model, tokenizer, [build_messages(q.question, prompt.system_prompt) for q in general],
        cfg.general_max_new_tokens, cfg.batch_size,
    ).answers if general else []
    return ModelAnswers(answers=generation.answers, nll=nll, extra=extra, general=general_answers)


def cache_key(ref: ModelRef, pairs: list[QAPair], general: list[GeneralQuestion], prompt: PromptConfig,
              cfg: EvaluationConfig) -> str:
    settings = cfg.model_dump(mode="json", include={
        "max_new_tokens", "general_max_new_tokens", "latency_samples", "device", "precision", "quantization",
    })
    payload = json.dumps({
        "model": ref.identity, "settings": settings, "conversations": as_served(pairs, prompt),
        "references": [p.answer for p in pairs], "general": [q.question for q in general],
    }, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def answers_of(ref: ModelRef, pairs: list[QAPair], general: list[GeneralQuestion], prompt: PromptConfig,
               cfg: EvaluationConfig, cache_dir: Path | None) -> tuple[ModelAnswers, bool]:
    """The model's answers, from the cache when its weights are known never to change
    and it answered these questions with these settings before; True when they did."""
    cached = cache_dir / f"{cache_key(ref, pairs, general, prompt, cfg)}.json" if cache_dir and ref.identity else None
    if cached is not None and cached.exists():
        try:
            return ModelAnswers.model_validate_json(cached.read_text()), True
        except ValueError:
            log.warning("ignoring unreadable cached answers %s", cached)
    model, tokenizer = load_model_and_tokenizer(ref.location, cfg)
    answers = generate_all(model, tokenizer, pairs, general, prompt, cfg)
    if cached is not None:
        write_atomic(cached, answers.model_dump_json())
    return answers, False


def by_source(pairs: list[QAPair], scored: dict[str, Scored], metric: str) -> dict[str, dict[str, float]]:
    sources: dict[str, list[int]] = {}
    for i, pair in enumerate(pairs):
        sources.setdefault(pair.source, []).append(i)
    return {
        source: {"n": float(len(idx))} | {label: s.value(metric, np.array(idx)) for label, s in scored.items()}
        for source, idx in sorted(sources.items())
    }


def evaluate(
    models: dict[ModelLabel, ModelRef],
    pairs: list[QAPair],
    prompt: PromptConfig,
    cfg: EvaluationConfig,
    cache_dir: Path | None = None,
) -> EvalReport:
    """Score each model (loaded one at a time) and compare the candidate with each of
    the others."""
    if ModelLabel.CANDIDATE not in models:
        raise ValueError("evaluate needs the candidate model")
    general = read_jsonl(cfg.general_qa, GeneralQuestion) if cfg.general_qa else []
    references, documents = [p.answer for p in pairs], [p.doc_id for p in pairs]
    scored: dict[str, Scored] = {}
    metrics: dict[str, dict[str, float]] = {}
    general_correct: dict[str, np.ndarray] = {}
    answers: dict[str, ModelAnswers] = {}
    reused: list[str] = []
    for label, ref in models.items():
        answers[label], from_cache = answers_of(ref, pairs, general, prompt, cfg, cache_dir)
        if from_cache:
            reused.append(label)
        scored[label] = score_answers(answers[label].answers, references, answers[label].nll)
        metrics[label] = scored[label].summary() | answers[label].extra
        if general:
            general_correct[label] = np.array(
                [float(contains_any(a, q.accept)) for a, q in zip(answers[label].general, general)]
            )
            metrics[label]["general_accuracy"] = float(general_correct[label].mean())
        log.info("%s%s: %s", label, " (cached answers)" if from_cache else "",
                 {k: round(v, 4) for k, v in metrics[label].items()})
    comparisons = []
    for other in (label for label in models if label is not ModelLabel.CANDIDATE):
        labels = (ModelLabel.CANDIDATE.value, other.value)
        comparisons += compare(scored[ModelLabel.CANDIDATE], scored[other], labels, cfg.bootstrap_samples,
                               cfg.confidence, clusters=documents)
        if general:
            comparisons.append(mean_gain("general_accuracy", general_correct[ModelLabel.CANDIDATE],
                                         general_correct[other], labels, cfg.bootstrap_samples, cfg.confidence))
    report = EvalReport(
        metrics=metrics,
        models={label.value: ref.location for label, ref in models.items()},
        reused=reused,
        comparisons=comparisons,
        by_source=by_source(pairs, scored, cfg.primary_metric),
        rows=[
            EvalRow(question=p.question, reference=p.answer, source=p.source, doc_id=p.doc_id, kind=p.kind,
                    answers={label: answers[label].answers[i] for label in models})
            for i, p in enumerate(pairs)
        ],
        general=[
            EvalRow(question=q.question, reference=q.answer, source=f"general/{q.topic}", kind="general",
                    answers={label: answers[label].general[i] for label in models})
            for i, q in enumerate(general)
        ],
    )
    return judge(report, cfg) if cfg.judge else report


def judge(report: EvalReport, cfg: EvaluationConfig) -> EvalReport:
    """Add the LLM judge's rubric scores (with a CI on the candidate's gain over the
    base) and its pairwise preferences between the candidate and the base."""
    rows = report.rows[: cfg.judge.max_examples] if cfg.judge.max_examples else report.rows
    questions, references = [r.question for r in rows], [r.reference for r in rows]
    pair = (ModelLabel.CANDIDATE.value, ModelLabel.BASE.value)
    comparisons, metrics = list(report.comparisons), {k: dict(v) for k, v in report.metrics.items()}
    pairwise_result = None
    if "rubric" in cfg.judge.modes:
        means: dict[str, np.ndarray] = {}
        for label in report.metrics:
            scores = rubric_scores(questions, references, [r.answers[label] for r in rows], cfg.judge)
            means[label] = np.array([mean(s.values()) for s in scores])
            metrics[label]["judge"] = float(means[label].mean())
            for criterion in cfg.judge.criteria:
                metrics[label][f"judge_{criterion}"] = mean(s[criterion] for s in scores)
        comparisons.append(mean_gain("judge", means[pair[0]], means[pair[1]], pair, cfg.bootstrap_samples,
                                     cfg.confidence))
    if "pairwise" in cfg.judge.modes:
        pairwise_result = pairwise(
            questions, references, [r.answers[pair[0]] for r in rows], [r.answers[pair[1]] for r in rows],
            cfg.judge, pair,
        )
        metrics[pair[0]]["judge_win_rate"] = pairwise_result.wins / pairwise_result.n
        metrics[pair[1]]["judge_win_rate"] = pairwise_result.losses / pairwise_result.n
    return report.model_copy(update={"metrics": metrics, "comparisons": comparisons, "pairwise": pairwise_result})
