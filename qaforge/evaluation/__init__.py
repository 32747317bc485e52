"""Evaluation: every system it is given (the candidate, the base, the production
version, each closed book or with retrieved passages) answers every question set (the
unseen-document test split, held-out phrasings of training questions, users' gold sets)
with the same prompts and greedy decoding. Per-question answer metrics, perplexity of
the references, refusals on unanswerable questions, retrieval recall, latency, the
forgetting guard's general questions, an optional LLM judge, and paired bootstrap
intervals of the gated system's gain over each other one, over resampled questions and
over resampled documents.

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

from qaforge.config import EvaluationConfig, GoldSet, PromptConfig
from qaforge.evaluation.judge import pairwise, rubric_scores
from qaforge.evaluation.metrics import Scored, compare, contains_any, mean_gain, score_answers
from qaforge.fsutil import write_atomic
from qaforge.general_data import GeneralQuestion, GoldQuestion, read_jsonl
from qaforge.mlflow_model import load_model_and_tokenizer
from qaforge.modeling import generate_answers, reference_nll, time_single_requests
from qaforge.prompting import build_messages
from qaforge.records import EvalReport, EvalRow, ModelLabel, Passage, QADataset, QAPair
from qaforge.refusal import is_refusal
from qaforge.retrieval import Retriever

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


@dataclass(frozen=True)
class System:
    """A model as it answers: closed book, or given the passages retrieved for each question."""

    model: ModelRef
    retrieval: bool = False


class ModelAnswers(BaseModel):
    """What one system produced for one question set: all that scoring needs."""

    answers: list[str]
    nll: list[tuple[float, int]]
    extra: dict[str, float]
    general: list[str] = []


def test_pairs(data: QADataset, cfg: EvaluationConfig) -> list[QAPair]:
    return data.test[: cfg.max_examples] if cfg.max_examples else data.test


def gold_pairs(gold: GoldSet) -> list[QAPair]:
    """A gold set as pairs; each category is a `source`, so the report breaks it down by category."""
    return [
        QAPair(question=g.question, answer=g.answer, chunk_id="", doc_id=f"{gold.name}-{i:04d}",
               source=f"{gold.name}/{g.category or 'uncategorized'}", kind=g.category or "gold", grounding=0.0)
        for i, g in enumerate(read_jsonl(gold.path, GoldQuestion))
    ]


def systems(candidate: ModelRef, base: ModelRef, production: ModelRef | None, serve_retrieval: bool,
            compare_modes: bool) -> tuple[dict[ModelLabel, System], ModelLabel, ModelLabel]:
    """The systems to score, and which of them the gate compares: the candidate as it
    will be served against the base model in the same mode (and production, also as
    served); with `compare_modes`, both models in the other mode too."""
    closed = {ModelLabel.CANDIDATE: System(candidate), ModelLabel.BASE: System(base)}
    retrieving = {ModelLabel.CANDIDATE_RETRIEVAL: System(candidate, True), ModelLabel.BASE_RETRIEVAL: System(base, True)}
    served, other = (retrieving, closed) if serve_retrieval else (closed, retrieving)
    chosen = served | ({ModelLabel.PRODUCTION: System(production, serve_retrieval)} if production else {})
    gated, baseline = served
    return chosen | (other if compare_modes else {}), gated, baseline


def question_sets(data: QADataset, cfg: EvaluationConfig) -> dict[str, list[QAPair]]:
    """Every question set to score, the one the gate decides on first."""
    limit = cfg.max_examples
    sets = {"test": test_pairs(data, cfg)}
    if cfg.paraphrases and data.paraphrase:
        n = min(cfg.paraphrases, limit or cfg.paraphrases, len(data.paraphrase))
        sets["paraphrase"] = [data.paraphrase[i * len(data.paraphrase) // n] for i in range(n)]
    for gold in cfg.gold:
        sets[gold.name] = gold_pairs(gold)
    return {cfg.gate_on: sets.pop(cfg.gate_on)} | sets


def as_served(pairs: list[QAPair], prompt: PromptConfig,
              context: list[list[Passage]] | None = None) -> list[list[dict[str, str]]]:
    """Each pair's conversation up to its question, as the server builds it."""
    return [
        build_messages(p.question, prompt.system_prompt, p.history, context[i] if context else ())
        for i, p in enumerate(pairs)
    ]


def generate_all(
    model: Any, tokenizer: Any, conversations: list[list[dict[str, str]]], pairs: list[QAPair],
    general: list[GeneralQuestion], prompt: PromptConfig, cfg: EvaluationConfig, latency: bool,
) -> ModelAnswers:
    """Answers, reference perplexities and refusal rates; with `latency`, speed and
    latency too; and the answers to the forgetting guard's questions, if given."""
    generation = generate_answers(model, tokenizer, conversations, cfg.max_new_tokens, cfg.batch_size)
    nll = reference_nll(model, tokenizer, conversations, [p.answer for p in pairs], cfg.batch_size)
    extra = {"tokens_per_s": generation.new_tokens / generation.seconds}
    refused = [is_refusal(a) for a in generation.answers]
    unanswerable = [p.kind == "unanswerable" for p in pairs]
    if any(unanswerable):
        extra["refusal_rate"] = mean(r for r, u in zip(refused, unanswerable) if u)
    if not all(unanswerable):
        extra["false_refusal_rate"] = mean(r for r, u in zip(refused, unanswerable) if not u)
    if latency and cfg.latency_samples:
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


def cache_key(ref: ModelRef, conversations: list[list[dict[str, str]]], pairs: list[QAPair],
              general: list[GeneralQuestion], cfg: EvaluationConfig, latency: bool) -> str:
    settings = cfg.model_dump(mode="json", include={
        "max_new_tokens", "general_max_new_tokens", "device", "precision", "quantization",
    }) | {"latency_samples": cfg.latency_samples if latency else 0}
    payload = json.dumps({
        "model": ref.identity, "settings": settings, "conversations": conversations,
        "references": [p.answer for p in pairs], "general": [q.question for q in general],
    }, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


class LazyModel:
    """A model loaded on first use only: a system whose answers are all cached is never loaded."""

    def __init__(self, ref: ModelRef, options: EvaluationConfig) -> None:
        self.ref, self.options, self.loaded = ref, options, None

    def get(self) -> tuple[Any, Any]:
        if self.loaded is None:
            self.loaded = load_model_and_tokenizer(self.ref.location, self.options)
        return self.loaded


def answers_of(model: LazyModel, conversations: list[list[dict[str, str]]], pairs: list[QAPair],
               general: list[GeneralQuestion], prompt: PromptConfig, cfg: EvaluationConfig, latency: bool,
               cache_dir: Path | None) -> tuple[ModelAnswers, bool]:
    """The model's answers, from the cache when its weights are known never to change
    and it answered these conversations with these settings before; True when they did."""
    ref = model.ref
    key = cache_key(ref, conversations, pairs, general, cfg, latency)
    cached = cache_dir / f"{key}.json" if cache_dir and ref.identity else None
    if cached is not None and cached.exists():
        try:
            return ModelAnswers.model_validate_json(cached.read_text()), True
        except ValueError:
            log.warning("ignoring unreadable cached answers %s", cached)
    answers = generate_all(*model.get(), conversations, pairs, general, prompt, cfg, latency)
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
    systems: dict[ModelLabel, System],
    sets: dict[str, list[QAPair]],
    prompt: PromptConfig,
    cfg: EvaluationConfig,
    *,
    gated: ModelLabel = ModelLabel.CANDIDATE,
    baseline: ModelLabel = ModelLabel.BASE,
    retriever: Retriever | None = None,
    top_k: int = 0,
    cache_dir: Path | None = None,
) -> EvalReport:
    """Score every system on every question set and compare the gated system with each
    of the others. Each model is loaded once (or not at all when its answers are all
    cached) and answers every set in each of its modes. The report is the first set's;
    the others are in its `other_sets`. Latency and the forgetting guard are measured
    on the first set only; the guard's general questions are asked closed book, as
    forgetting is about the weights."""
    if gated not in systems or baseline not in systems:
        raise ValueError(f"evaluate needs the {gated} and {baseline} systems")
    if retriever is None and any(s.retrieval for s in systems.values()):
        raise ValueError("systems with retrieval need a retriever")
    general = read_jsonl(cfg.general_qa, GeneralQuestion) if cfg.general_qa else []
    first = next(iter(sets))
    contexts = {name: retriever.search_many([p.question for p in pairs], top_k) if retriever else None
                for name, pairs in sets.items()}
    answers: dict[tuple[str, ModelLabel], ModelAnswers] = {}
    reused: set[ModelLabel] = set()
    for ref in dict.fromkeys(s.model for s in systems.values()):
        model, guard_answers = LazyModel(ref, cfg), None
        for label, system in ((lb, s) for lb, s in systems.items() if s.model == ref):
            for name, pairs in sets.items():
                conversations = as_served(pairs, prompt, contexts[name] if system.retrieval else None)
                # The guard asks closed book, so a model answers it once, whatever its modes.
                guard = general if name == first and guard_answers is None else []
                found, hit = answers_of(model, conversations, pairs, guard, prompt, cfg, name == first, cache_dir)
                if name == first:
                    guard_answers = found.general if guard_answers is None else guard_answers
                    found = found.model_copy(update={"general": guard_answers})
                answers[name, label] = found
                if hit:
                    reused.add(label)
        del model  # one model in memory at a time
    reports = [
        set_report(name, pairs, {label: answers[name, label] for label in systems}, systems, general if name == first
                   else [], cfg, gated, baseline, retriever.recall([p.question for p in pairs],
                                                                  [p.chunk_id for p in pairs], top_k)
                   if retriever else None)
        for name, pairs in sets.items()
    ]
    report = reports[0].model_copy(update={"reused": sorted(reused), "other_sets": reports[1:]})
    return judge(report, cfg) if cfg.judge else report


def set_report(
    name: str, pairs: list[QAPair], answers: dict[ModelLabel, ModelAnswers], systems: dict[ModelLabel, System],
    general: list[GeneralQuestion], cfg: EvaluationConfig, gated: ModelLabel, baseline: ModelLabel,
    recall: float | None,
) -> EvalReport:
    references, documents = [p.answer for p in pairs], [p.doc_id for p in pairs]
    scored: dict[str, Scored] = {}
    metrics: dict[str, dict[str, float]] = {}
    general_correct: dict[ModelLabel, np.ndarray] = {}
    for label, found in answers.items():
        scored[label] = score_answers(found.answers, references, found.nll)
        metrics[label] = scored[label].summary() | found.extra
        if general and found.general:
            general_correct[label] = np.array(
                [float(contains_any(a, q.accept)) for a, q in zip(found.general, general)]
            )
            metrics[label]["general_accuracy"] = float(general_correct[label].mean())
        log.info("%s, %s: %s", name, label, {k: round(v, 4) for k, v in metrics[label].items()})
    comparisons = []
    for other in (label for label in systems if label is not gated):
        labels = (gated.value, other.value)
        comparisons += compare(scored[gated], scored[other], labels, cfg.bootstrap_samples, cfg.confidence,
                               clusters=documents)
    for other in (label for label in general_correct if label is not gated):
        comparisons.append(mean_gain("general_accuracy", general_correct[gated], general_correct[other],
                                     (gated.value, other.value), cfg.bootstrap_samples, cfg.confidence))
    return EvalReport(
        question_set=name,
        gated=gated,
        baseline=baseline,
        retrieval_recall=recall,
        metrics=metrics,
        models={label.value: s.model.location for label, s in systems.items()},
        comparisons=comparisons,
        by_source=by_source(pairs, scored, cfg.primary_metric),
        rows=[
            EvalRow(question=p.question, reference=p.answer, source=p.source, doc_id=p.doc_id, kind=p.kind,
                    answers={label: answers[label].answers[i] for label in systems})
            for i, p in enumerate(pairs)
        ],
        general=[
            EvalRow(question=q.question, reference=q.answer, source=f"general/{q.topic}", kind="general",
                    answers={label: answers[label].general[i] for label in general_correct})
            for i, q in enumerate(general)
        ] if general_correct else [],
    )


def judge(report: EvalReport, cfg: EvaluationConfig) -> EvalReport:
    """Add the LLM judge's rubric scores (with a CI on the candidate's gain over the
    base) and its pairwise preferences between the candidate and the base."""
    rows = report.rows[: cfg.judge.max_examples] if cfg.judge.max_examples else report.rows
    questions, references = [r.question for r in rows], [r.reference for r in rows]
    pair = (report.gated.value, report.baseline.value)
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
