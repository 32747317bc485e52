"""The question sets an evaluation scores, what their intervals resample, and which
set the gate can decide on.

Questions about one document (or of one group of a gold set) are not independent, so
an interval resamples whole documents (groups). Over very few of them the interval
means nothing: a cluster bootstrap over one document has no width at all. A set needs
`min_units(confidence)` units before the gate may decide on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from qaforge.config import EvaluationConfig, GoldSet
from qaforge.general_data import GoldQuestion, read_jsonl
from qaforge.records import UNANSWERABLE, QADataset, QAPair, QuestionSet, Resampling


@dataclass(frozen=True)
class Questions:
    """A question set, and for each question the unit its intervals resample."""

    name: str
    pairs: list[QAPair]
    unit: Resampling
    clusters: list[str]
    note: str = ""  # why this unit, when it is not the obvious one

    @property
    def resampled(self) -> list[str] | None:
        """What a cluster bootstrap resamples, per question; None when it is single questions."""
        return None if self.unit == Resampling.QUESTIONS else self.clusters

    @property
    def units(self) -> int:
        return len(set(self.clusters))

    def describe(self) -> str:
        return f"{len(self.pairs)} questions, {self.units} {self.unit}"


def min_units(confidence: float) -> int:
    """The fewest units a set needs for its interval to mean anything at `confidence`:
    with k units, even a system better on every one of them is significantly better
    by a two-sided sign test only when 2 * 0.5**k < 1 - confidence (6 units at 95%).
    A bootstrap over fewer gives narrow intervals that claim what the data cannot show."""
    return math.floor(math.log2(2 / (1 - confidence))) + 1


def spread(pairs: list[QAPair], n: int | None) -> list[QAPair]:
    """At most `n` of the pairs, spread evenly over them (so over their documents)."""
    if not n or n >= len(pairs):
        return pairs
    return [pairs[i * len(pairs) // n] for i in range(n)]


def by_document(name: str, pairs: list[QAPair]) -> Questions:
    """Each document one unit; the unanswerable questions together one more: they share an
    answer and test one behaviour, and must not make a split of few documents look like many."""
    return Questions(name, pairs, Resampling.DOCUMENTS, [UNANSWERABLE if p.unanswerable else p.doc_id for p in pairs])


def gold_questions(gold: GoldSet, confidence: float) -> Questions:
    """A gold set, resampled by its `group` field where lines have one (a line without
    is its own group). Otherwise by `category` when there are enough categories:
    questions of one category are about one topic, often one page, and stand or fall
    together. Otherwise by question, which is all a flat list of questions allows."""
    records = read_jsonl(gold.path, GoldQuestion)
    pairs = [
        QAPair(history=g.history, question=g.question, answer=g.answer, chunk_id="", doc_id=f"{gold.name}-{i:04d}",
               source=f"{gold.name}/{g.category or 'uncategorized'}", kind=g.category or "gold", grounding=0.0)
        for i, g in enumerate(records)
    ]
    if any(g.group for g in records):
        return Questions(gold.name, pairs, Resampling.GROUPS,
                         [g.group or f"question {i}" for i, g in enumerate(records)])
    categories = [g.category for g in records]
    if all(categories) and len(set(categories)) >= min_units(confidence):
        return Questions(gold.name, pairs, Resampling.CATEGORIES, categories)
    note = (f"resampled by question: its {len(set(categories))} categories are too few to resample"
            if all(categories) else "resampled by question: its lines have no group or category")
    return Questions(gold.name, pairs, Resampling.QUESTIONS, [str(i) for i in range(len(pairs))], note)


def check_gold_sets(cfg: EvaluationConfig) -> None:
    """Read every gold set now: a missing file or a bad line is an error naming it
    before anything is trained, not after."""
    for gold in cfg.gold:
        gold_questions(gold, cfg.confidence)


def question_sets(data: QADataset, cfg: EvaluationConfig) -> dict[str, Questions]:
    """Every set to score: the unseen-document test split, the held-out facts of training
    documents, reworded training questions, and users' gold sets."""
    sets = {QuestionSet.TEST.value: by_document(QuestionSet.TEST, spread(data.test, cfg.max_examples))}
    for name, limit in ((QuestionSet.KNOWLEDGE, cfg.knowledge), (QuestionSet.MEMORISATION, cfg.memorisation)):
        if limit and (pairs := data.question_set(name)):
            sets[name.value] = by_document(name, spread(pairs, limit))
    for gold in cfg.gold:
        sets[gold.name] = gold_questions(gold, cfg.confidence)
    return sets


def gate_set(sets: dict[str, Questions], gate_on: str, confidence: float) -> tuple[str | None, str]:
    """The set the gate decides on, and a note when it is not `gate_on`: that one when it
    has enough units; otherwise the first that has of the gold sets (people's questions),
    the test split and the knowledge set; otherwise none, and nothing can be promoted.
    Memorisation never decides: a gain there can be a repeated training answer."""
    need, wanted = min_units(confidence), sets[gate_on]
    if wanted.units >= need:
        return gate_on, ""
    note = (f"The {gate_on} set has {wanted.describe()}: too few for a {confidence:.0%} interval to mean anything "
            f"(it takes {need}: with fewer, even a system better on every one of them is not significantly "
            "better by a sign test).")
    rank: dict[str, int] = {QuestionSet.TEST: 1, QuestionSet.KNOWLEDGE: 2}
    fallbacks = sorted((name for name, q in sets.items()
                        if name not in (gate_on, QuestionSet.MEMORISATION) and q.units >= need),
                       key=lambda name: rank.get(name, 0))
    if fallbacks:
        return fallbacks[0], f"{note} The gate decides on the {fallbacks[0]} set instead ({sets[fallbacks[0]].describe()})."
    return None, (f"{note} No other set has enough, so nothing can be promoted: add documents, raise "
                  f"synthesis.split.test, or give a gold set (evaluation.gold) of at least {need} questions "
                  "or groups.")
