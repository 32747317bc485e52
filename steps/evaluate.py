"""Evaluate: base vs fine-tuned on the held-out test split, same prompts, same
greedy decoding. ROUGE via rouge-score, BLEU and chrF via sacrebleu (0-100 scale),
SQuAD-style token F1 and exact match, and generation speed."""

from __future__ import annotations

import logging
import re
import string
from collections import Counter
from statistics import mean
from typing import Any

import mlflow
import sacrebleu
from rouge_score import rouge_scorer
from zenml import step

from qaforge.config import EvaluationConfig, PromptConfig
from qaforge.modeling import generate_answers, load_for_inference
from qaforge.prompting import build_messages
from qaforge.records import EvalReport, EvalRow, QADataset, QAPair, TrainedModel

log = logging.getLogger(__name__)

_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD normalization: lower case, no punctuation, no articles, single spaces."""
    text = "".join(c for c in text.lower() if c not in string.punctuation)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, reference: str) -> float:
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(reference).split()
    overlap = sum((Counter(predicted) & Counter(expected)).values())
    if not predicted or not expected or not overlap:
        return float(predicted == expected)
    precision, recall = overlap / len(predicted), overlap / len(expected)
    return 2 * precision * recall / (precision + recall)


def score(predictions: list[str], references: list[str]) -> dict[str, float]:
    if not predictions or len(predictions) != len(references):
        raise ValueError(
            f"need equal, non-zero numbers of predictions ({len(predictions)}) "
            f"and references ({len(references)})"
        )
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    rouge = [scorer.score(ref, pred) for pred, ref in zip(predictions, references)]
    return {
        **{name: mean(r[name].fmeasure for r in rouge) for name in ("rouge1", "rouge2", "rougeL")},
        "bleu": sacrebleu.corpus_bleu(predictions, [references]).score,
        "chrf": sacrebleu.corpus_chrf(predictions, [references]).score,
        "token_f1": mean(token_f1(p, r) for p, r in zip(predictions, references)),
        "exact_match": mean(
            float(normalize_answer(p) == normalize_answer(r)) for p, r in zip(predictions, references)
        ),
        "answer_words": mean(len(p.split()) for p in predictions),
    }


def answer_and_score(
    model: Any, tokenizer: Any, pairs: list[QAPair], prompt: PromptConfig, cfg: EvaluationConfig
) -> tuple[list[str], dict[str, float]]:
    generation = generate_answers(
        model,
        tokenizer,
        [build_messages(p.question, prompt.system_prompt, p.history) for p in pairs],
        cfg.max_new_tokens,
        cfg.batch_size,
    )
    metrics = score(generation.answers, [p.answer for p in pairs])
    metrics["ms_per_answer"] = 1000 * generation.seconds / len(pairs)
    metrics["tokens_per_s"] = generation.new_tokens / generation.seconds
    return generation.answers, metrics


def test_pairs(data: QADataset, cfg: EvaluationConfig) -> list[QAPair]:
    return data.test[: cfg.max_examples] if cfg.max_examples else data.test


def evaluate(
    model_dirs: dict[str, str], pairs: list[QAPair], prompt: PromptConfig, cfg: EvaluationConfig
) -> EvalReport:
    """Score each labelled model directory; models are loaded one at a time."""
    answers: dict[str, list[str]] = {}
    metrics: dict[str, dict[str, float]] = {}
    for label, path in model_dirs.items():
        model, tokenizer = load_for_inference(path)
        answers[label], metrics[label] = answer_and_score(model, tokenizer, pairs, prompt, cfg)
        del model
        log.info("%s: %s", label, {k: round(v, 4) for k, v in metrics[label].items()})
    rows = [
        EvalRow(
            question=p.question,
            reference=p.answer,
            source=p.source,
            answers={label: answers[label][i] for label in model_dirs},
        )
        for i, p in enumerate(pairs)
    ]
    return EvalReport(metrics=metrics, rows=rows)


def metrics_table(metrics: dict[str, dict[str, float]]) -> str:
    labels = list(metrics)
    names = list(next(iter(metrics.values())))
    lines = [f"{'metric':<14}" + "".join(f"{label:>12}" for label in labels)]
    lines += [f"{n:<14}" + "".join(f"{metrics[label][n]:>12.4f}" for label in labels) for n in names]
    return "\n".join(lines)


def log_report(report: EvalReport) -> None:
    for label, values in report.metrics.items():
        mlflow.log_metrics({f"eval/{label}/{name}": value for name, value in values.items()})
    table: dict[str, list[str]] = {
        "question": [r.question for r in report.rows],
        "reference": [r.reference for r in report.rows],
        "source": [r.source for r in report.rows],
    }
    for label in report.metrics:
        table[label] = [r.answers[label] for r in report.rows]
    mlflow.log_table(data=table, artifact_file="eval/answers.json")


@step(experiment_tracker=True)
def evaluate_step(
    data: QADataset, trained: TrainedModel, prompt: PromptConfig, evaluation: EvaluationConfig
) -> EvalReport:
    report = evaluate(
        {"base": trained.base_model_dir, "candidate": trained.merged_dir},
        test_pairs(data, evaluation),
        prompt,
        evaluation,
    )
    log_report(report)
    print(metrics_table(report.metrics))
    return report
