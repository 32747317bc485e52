"""Answer-quality metrics, per example where they can be, and paired bootstrap
confidence intervals for the difference between two models on the same questions.

ROUGE via rouge-score; BLEU and chrF via sacrebleu (0-100 scale), resampled the way
sacrebleu's own paired bootstrap does it, from per-sentence statistics; SQuAD-style
token F1 and exact match; perplexity of the reference answers.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU, CHRF

from qaforge.config import Metric
from qaforge.records import Interval, Resampling

_ARTICLES = re.compile(r"\b(a|an|the)\b")
# A figure as written: "18", "7.4", "1,500" (thousands commas are not decimal marks here).
_NUMBER = re.compile(r"(?<![\w.])\d+(?:,\d{3})*(?:\.\d+)?")
CORPUS = {"bleu": BLEU(), "chrf": CHRF()}
# Metrics where lower is better; every gain below is "candidate minus other", signed so higher is better.
LOWER_IS_BETTER = frozenset({"perplexity"})
NUMERIC_ACCURACY = "numeric_accuracy"


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


def numbers(text: str) -> set[str]:
    """The figures a text states, normalized so "1,500" and "1500" are one figure."""
    figures = (m.replace(",", "") for m in _NUMBER.findall(text))
    return {f.rstrip("0").rstrip(".") if "." in f else f for f in figures}


def numeric_accuracy(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Of the questions whose reference answer states figures, the share answered with
    all of them: ROUGE gives a wrong figure in a well-worded sentence most of its
    credit, a user gives it none. Empty when no reference states a figure."""
    asked = [(numbers(r), p) for p, r in zip(predictions, references)]
    stated = [figures <= numbers(p) for figures, p in asked if figures]
    return {NUMERIC_ACCURACY: float(np.mean(stated))} if stated else {}


def breakdown_metric(primary_metric: str) -> str:
    """The metric of the per-source breakdown: the primary one, but ROUGE-L when that is
    the judge's score, which comes after the sets are scored and costs a request each."""
    return Metric.ROUGE_L if primary_metric == Metric.JUDGE else primary_metric


def contains_any(answer: str, accepted: list[str]) -> bool:
    """Whether the answer states one of the accepted short answers (style-independent)."""
    text = f" {normalize_answer(answer)} "
    return any(f" {normalize_answer(a)} " in text for a in accepted)


@dataclass
class Scored:
    """One model's answers to a question set, scored per example, so any metric can be
    computed on any resample of the questions."""

    predictions: list[str]
    references: list[str]
    per_example: dict[str, np.ndarray]
    corpus_stats: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        names = [n for n in self.per_example if not n.startswith("_")] + list(self.corpus_stats)
        return names + (["perplexity"] if "_nll" in self.per_example else [])

    def value(self, name: str, idx: np.ndarray | None = None) -> float:
        idx = np.arange(len(self.predictions)) if idx is None else idx
        if name in self.corpus_stats:
            return float(CORPUS[name]._compute_score_from_stats(self.corpus_stats[name][idx].sum(0)).score)
        if name == "perplexity":
            return math.exp(self.per_example["_nll"][idx].sum() / max(self.per_example["_tokens"][idx].sum(), 1))
        return float(self.per_example[name][idx].mean())

    def summary(self) -> dict[str, float]:
        return {name: self.value(name) for name in self.names}


def score_answers(
    predictions: list[str], references: list[str], nll: list[tuple[float, int]] | None = None
) -> Scored:
    """Per-example ROUGE, token F1, exact match and length, sentence statistics for
    BLEU and chrF, and, given each reference's (summed NLL, tokens), perplexity."""
    if not predictions or len(predictions) != len(references):
        raise ValueError(
            f"need equal, non-zero numbers of predictions ({len(predictions)}) "
            f"and references ({len(references)})"
        )
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    rouge = [scorer.score(ref, pred) for pred, ref in zip(predictions, references)]
    per_example = {name: np.array([r[name].fmeasure for r in rouge]) for name in ("rouge1", "rouge2", "rougeL")}
    pairs = list(zip(predictions, references))
    per_example["token_f1"] = np.array([token_f1(p, r) for p, r in pairs])
    per_example["exact_match"] = np.array([float(normalize_answer(p) == normalize_answer(r)) for p, r in pairs])
    per_example["answer_words"] = np.array([float(len(p.split())) for p in predictions])
    if nll is not None:
        per_example["_nll"] = np.array([n for n, _ in nll])
        per_example["_tokens"] = np.array([t for _, t in nll])
    corpus_stats = {
        name: np.array(metric._extract_corpus_statistics(predictions, [references]))
        for name, metric in CORPUS.items()
    }
    return Scored(predictions, references, per_example, corpus_stats)


def paired_bootstrap(
    metric: str,
    a: Callable[[np.ndarray], float],
    b: Callable[[np.ndarray], float],
    n: int,
    labels: tuple[str, str] = ("candidate", "base"),
    samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    clusters: Sequence[str] | None = None,
    unit: Resampling = Resampling.DOCUMENTS,
) -> Interval:
    """Resample with replacement, score both models on each resample and take the
    percentile interval of the difference. Without `clusters` the n questions are
    resampled; with them (one id per question, e.g. its document), whole clusters are,
    since questions about one document are not independent of each other; `unit`
    names what the clusters are."""
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    everything = np.arange(n)
    rng = np.random.default_rng(seed)
    if clusters is None:
        resamples = list(rng.integers(0, n, size=(samples, n)))
    else:
        members: dict[str, list[int]] = {}
        for i, cluster in enumerate(clusters):
            members.setdefault(cluster, []).append(i)
        groups = [np.array(m) for m in members.values()]
        resamples = [np.concatenate([groups[g] for g in picks])
                     for picks in rng.integers(0, len(groups), size=(samples, len(groups)))]
    gains = np.array([sign * (a(idx) - b(idx)) for idx in resamples])
    tail = (1 - confidence) / 2 * 100
    value_a, value_b = a(everything), b(everything)
    return Interval(
        metric=metric,
        a=labels[0],
        b=labels[1],
        value_a=value_a,
        value_b=value_b,
        gain=sign * (value_a - value_b),
        low=float(np.percentile(gains, tail)),
        high=float(np.percentile(gains, 100 - tail)),
        confidence=confidence,
        resampled=Resampling.QUESTIONS if clusters is None else unit,
        clusters=n if clusters is None else len(set(clusters)),
    )


def mean_gain(
    metric: str, a: np.ndarray, b: np.ndarray, labels: tuple[str, str], samples: int, confidence: float,
    clusters: Sequence[str] | None = None, unit: Resampling = Resampling.DOCUMENTS,
) -> Interval:
    """`paired_bootstrap` of the means of two per-question score arrays."""
    return paired_bootstrap(
        metric, lambda idx: float(a[idx].mean()), lambda idx: float(b[idx].mean()), len(a), labels, samples,
        confidence, clusters=clusters, unit=unit,
    )


def compare(
    a: Scored, b: Scored, labels: tuple[str, str], samples: int, confidence: float, seed: int = 0,
    clusters: Sequence[str] | None = None, unit: Resampling = Resampling.DOCUMENTS,
) -> list[Interval]:
    """Every metric both models have, as `a - b` with a confidence interval over
    resampled questions and, given each question's cluster (its document, say), over
    resampled clusters."""
    n = len(a.predictions)
    return [
        paired_bootstrap(
            name,
            partial(a.value, name),
            partial(b.value, name),
            n,
            labels,
            samples,
            confidence,
            seed,
            groups,
            unit,
        )
        for name in a.names
        if name in b.names and name != "answer_words"
        for groups in ([None] if clusters is None else [None, clusters])
    ]
