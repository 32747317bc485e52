"""The run over systems and question sets: every system answers every set as the
server would ask it, each model loaded once (or not at all when its answers are all
cached); then per-question scores, the gated system's gains over each other system
with intervals over questions and over the set's units, and the forgetting guard."""

from __future__ import annotations

import logging
from statistics import mean

import numpy as np

from qaforge.config import EvaluationConfig
from qaforge.evaluation.answers import (
    AnswerCache,
    Answers,
    Ask,
    LazyModel,
    ModelRef,
    System,
    answer,
    as_asked,
    messages_of,
    speed,
)
from qaforge.evaluation.judge import judge_set
from qaforge.evaluation.metrics import (
    Scored,
    breakdown_metric,
    compare,
    contains_any,
    mean_gain,
    numeric_accuracy,
    score_answers,
)
from qaforge.evaluation.sets import Questions, gate_set
from qaforge.general_data import GeneralQuestion, read_jsonl
from qaforge.prompting import conversation_query
from qaforge.records import EvalReport, EvalRow, GuardReport, ModelLabel, QAPair, SetReport
from qaforge.refusal import is_refusal
from qaforge.served import Answering

log = logging.getLogger(__name__)
GUARD = "guard"  # the forgetting guard's scope in the timings and metric names


def systems(candidate: ModelRef, base: ModelRef, production: System | None, closed: Answering,
            retrieving: Answering, serve_retrieval: bool, compare_modes: bool
            ) -> tuple[dict[ModelLabel, System], ModelLabel, ModelLabel]:
    """The systems to score, and which two the gate compares: the candidate as it will
    be served against the base model asked the same way; production as it is served;
    with `compare_modes`, both models in the other mode too."""
    closed_book = {ModelLabel.CANDIDATE: System(candidate, closed), ModelLabel.BASE: System(base, closed)}
    with_passages = {ModelLabel.CANDIDATE_RETRIEVAL: System(candidate, retrieving),
                     ModelLabel.BASE_RETRIEVAL: System(base, retrieving)}
    served, other = (with_passages, closed_book) if serve_retrieval else (closed_book, with_passages)
    chosen = served | ({ModelLabel.PRODUCTION: production} if production else {})
    gated, baseline = served
    return chosen | (other if compare_modes else {}), gated, baseline


def by_source(pairs: list[QAPair], scored: dict[ModelLabel, Scored], metric: str) -> dict[str, dict[str, float]]:
    sources: dict[str, list[int]] = {}
    for i, pair in enumerate(pairs):
        sources.setdefault(pair.source, []).append(i)
    return {
        source: {"n": float(len(idx))} | {label: s.value(metric, np.array(idx)) for label, s in scored.items()}
        for source, idx in sorted(sources.items())
    }


def refusal_rates(answers: list[str], pairs: list[QAPair]) -> dict[str, float]:
    refused = [is_refusal(a) for a in answers]
    unanswerable = [p.unanswerable for p in pairs]
    rates = {}
    if any(unanswerable):
        rates["refusal_rate"] = mean(r for r, u in zip(refused, unanswerable) if u)
    if not all(unanswerable):
        rates["false_refusal_rate"] = mean(r for r, u in zip(refused, unanswerable) if not u)
    return rates


def retrieval_recall(questions: Questions, systems: dict[ModelLabel, System]) -> float | None:
    """Share of the set's questions whose source chunk the served retrieval finds."""
    answering = next((s.answering for s in systems.values() if s.answering.retrieves), None)
    if answering is None or answering.retriever is None:
        return None
    return answering.retriever.recall([conversation_query(messages_of(p)) for p in questions.pairs],
                                      [p.chunk_id for p in questions.pairs], answering.top_k)


def score_set(questions: Questions, answers: dict[ModelLabel, Answers], systems: dict[ModelLabel, System],
              cfg: EvaluationConfig, gated: ModelLabel) -> SetReport:
    pairs = questions.pairs
    references = [p.answer for p in pairs]
    scored = {label: score_answers(found.answers, references, found.nll or None) for label, found in answers.items()}
    metrics = {label: scored[label].summary() | refusal_rates(found.answers, pairs)
               | numeric_accuracy(found.answers, references) for label, found in answers.items()}
    for label in metrics:
        log.info("%s, %s: %s", questions.name, label, {k: round(v, 4) for k, v in metrics[label].items()})
    clusters = questions.resampled
    comparisons = [
        interval
        for other in answers if other is not gated
        for interval in compare(scored[gated], scored[other], (gated.value, other.value), cfg.bootstrap_samples,
                                cfg.confidence, clusters=clusters, unit=questions.unit)
    ]
    return SetReport(
        name=questions.name, unit=questions.unit, units=questions.units,
        retrieval_recall=retrieval_recall(questions, systems), metrics=metrics, comparisons=comparisons,
        by_source=by_source(pairs, scored, breakdown_metric(cfg.primary_metric)),
        rows=[EvalRow(question=p.question, reference=p.answer, source=p.source, doc_id=p.doc_id, kind=p.kind,
                      answers={label: answers[label].answers[i] for label in answers})
              for i, p in enumerate(pairs)],
    )


def score_guard(general: list[GeneralQuestion], answers: dict[ModelLabel, list[str]], cfg: EvaluationConfig,
                gated: ModelLabel) -> GuardReport:
    correct = {label: np.array([float(contains_any(a, q.accept)) for a, q in zip(found, general)])
               for label, found in answers.items()}
    return GuardReport(
        accuracy={label: float(c.mean()) for label, c in correct.items()},
        comparisons=[mean_gain("general_accuracy", correct[gated], correct[other], (gated.value, other.value),
                               cfg.bootstrap_samples, cfg.confidence)
                     for other in correct if other is not gated],
        rows=[EvalRow(question=q.question, reference=q.answer, source=f"general/{q.topic}", kind="general",
                      answers={label: found[i] for label, found in answers.items()})
              for i, q in enumerate(general)],
    )


def evaluate(
    systems: dict[ModelLabel, System],
    sets: dict[str, Questions],
    cfg: EvaluationConfig,
    *,
    gated: ModelLabel = ModelLabel.CANDIDATE,
    baseline: ModelLabel = ModelLabel.BASE,
    gate_on: str | None = None,
    cache: AnswerCache | None = None,
) -> EvalReport:
    """Score the systems on the question sets and compare the gated system with each of
    the others; decide which set the gate reads (`gate_on`, unless it has too few units).
    The gated system, its baseline and production answer every set; any other system
    (the other mode) answers the gate's set only, which tells which mode wins. The
    references' perplexity (for the compared systems) and the latency of single
    requests (the gated system's) are measured on the gate's set; the guard's general
    questions go to the gated system and its baseline, closed book."""
    if gated not in systems or baseline not in systems:
        raise ValueError(f"evaluate needs the {gated} and {baseline} systems")
    cache = cache or AnswerCache(None)
    gate_on = gate_on or next(iter(sets))
    decided, note = gate_set(sets, gate_on, cfg.confidence)
    timed = decided or gate_on
    general = read_jsonl(cfg.general_qa, GeneralQuestion) if cfg.general_qa else []
    answers: dict[str, dict[ModelLabel, Answers]] = {name: {} for name in [*sets, GUARD]}
    seconds: dict[str, dict[str, float]] = {name: {} for name in answers}
    reused: set[ModelLabel] = set()
    for ref in dict.fromkeys(s.model for s in systems.values()):
        asks = []
        for label, system in ((lb, s) for lb, s in systems.items() if s.model == ref):
            compared = label in (gated, baseline, ModelLabel.PRODUCTION)
            asks += [Ask((name, label), as_asked(q.pairs, system.answering),
                         [p.answer for p in q.pairs] if name == timed and compared else None, cfg.max_new_tokens,
                         cfg.latency_samples if name == timed and label == gated else 0)
                     for name, q in sets.items() if compared or name == timed]
            if general and label in (gated, baseline):  # the guard asks closed book: forgetting is in the weights
                closed = Answering(system.answering.system_prompt)
                asks.append(Ask((GUARD, label), as_asked(guard_pairs(general), closed), None,
                                cfg.general_max_new_tokens))
        found = answer(LazyModel(ref, cfg), asks, cfg.batch_size, cache)  # one model in memory at a time
        missed = set()
        for (name, label), (result, hit) in found.items():
            answers[name][label], seconds[name][label] = result, 0.0 if hit else result.seconds
            if not hit:
                missed.add(label)
        reused |= {label for _, label in found} - missed
    scored = {name: score_set(questions, answers[name], systems, cfg, gated) for name, questions in sets.items()}
    if cfg.judge:  # every set, so that the gate can decide on the judge's score wherever it reads
        scored = {name: judge_set(scores, gated, baseline, cfg, sets[name].resampled) for name, scores in scored.items()}
    return EvalReport(
        gated=gated, baseline=baseline, models={label.value: s.model.location for label, s in systems.items()},
        reused=sorted(reused), sets=scored, gate_set=decided, gate_note=note,
        guard=score_guard(general, {lb: a.answers for lb, a in answers[GUARD].items()}, cfg, gated)
        if answers[GUARD] else None,
        speed={label: speed(found) for label, found in answers[timed].items()}, seconds=seconds,
    )


def guard_pairs(general: list[GeneralQuestion]) -> list[QAPair]:
    return [QAPair(question=q.question, answer=q.answer, chunk_id="", doc_id="", source="general", kind="general",
                   grounding=0.0) for q in general]
