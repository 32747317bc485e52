"""Evaluation: every system (the candidate, the base and the production version, each
closed book or with retrieved passages, production exactly as it is served) answers
every question set (the unseen-document test split, held-out facts of training
documents, reworded training questions, users' gold sets) through the server's
generation engine. Per-question metrics, perplexity of the references, refusals,
retrieval recall, latency, the forgetting guard, an optional LLM judge, and paired
bootstrap intervals of the gated system's gain over each other system, over questions
and over documents (or a gold set's groups). The report says which set the gate reads:
one with enough documents for its interval to mean anything.

- `answers`: what a system answers, and the cache of answers of models that do not change;
- `sets`: the question sets, what their intervals resample, and which one the gate reads;
- `run`: the run over systems and sets, and the scores;
- `metrics`, `judge`: answer metrics with bootstrap intervals, and the LLM judge;
- `report`: the human-readable report (sections, rendering, plots).
"""

from qaforge.evaluation.answers import AnswerCache, ModelRef, System
from qaforge.evaluation.run import evaluate, systems
from qaforge.evaluation.sets import Questions, gate_set, min_units, question_sets

__all__ = [
    "AnswerCache", "ModelRef", "Questions", "System", "evaluate", "gate_set", "min_units", "question_sets", "systems",
]
