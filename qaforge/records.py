"""Typed records passed between pipeline stages, defined once.

Each stage returns one container record (Corpus, ChunkSet, QADataset, ...) so
ZenML stores it as a single JSON artifact instead of one artifact per item.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Document(BaseModel):
    doc_id: str = Field(description="Stable id derived from the source.")
    source: str = Field(description="URL, or path of a file or of a served-folder page.")
    title: str
    markdown: str
    content_hash: str = Field(description="SHA-256 of the cleaned text.")
    fetched_at: datetime = Field(description="When this content was fetched (kept while unchanged).")
    converter: str = Field(description="What produced the text, e.g. 'crawl4ai+docling-html'.")
    status: int | None = Field(default=None, description="HTTP status for web pages.")
    docling_json: str = Field(repr=False, description="Serialized DoclingDocument, for chunking.")


FailureKind = Literal[
    "unreachable", "unreadable", "timeout", "http_error", "robots", "blocked", "content_type",
    "too_large", "conversion", "encrypted", "empty", "too_short", "language",
]


class IngestFailure(BaseModel):
    source: str
    kind: FailureKind
    reason: str
    status: int | None = None


class Duplicate(BaseModel):
    source: str
    duplicate_of: str
    kind: Literal["exact", "near"]
    similarity: float


class SourceChanges(BaseModel):
    """What differs from the previous ingest of the same sources."""

    added: list[str] = Field(default_factory=list)
    changed: list[str] = Field(default_factory=list)
    removed: list[str] = Field(default_factory=list)
    unchanged: list[str] = Field(default_factory=list)

    @property
    def any(self) -> bool:
        return bool(self.added or self.changed or self.removed)

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.model_dump().items()}


class Corpus(BaseModel):
    """Only the documents: unchanged sources give an identical artifact, so ZenML
    serves every downstream step from its cache."""

    documents: list[Document]


class IngestReport(BaseModel):
    checked_at: datetime
    documents: int
    failures: list[IngestFailure] = Field(default_factory=list)
    duplicates: list[Duplicate] = Field(default_factory=list)
    changes: SourceChanges = Field(default_factory=SourceChanges)
    fingerprint: str = Field(default="", description="Hash of every input fetched, as `qaforge sources-changed` "
                             "computes it: equal fingerprints, nothing to retrain for.")
    notes: list[str] = Field(default_factory=list, description="e.g. the PDF pipeline fallback.")

    def failure_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for failure in self.failures:
            counts[failure.kind] = counts.get(failure.kind, 0) + 1
        return counts


class Chunk(BaseModel):
    chunk_id: str
    doc_id: str
    source: str
    title: str
    headings: list[str]
    text: str
    token_count: int
    # Provenance of the document it came from.
    doc_content_hash: str
    fetched_at: datetime
    converter: str
    status: int | None = None


class ChunkSet(BaseModel):
    chunks: list[Chunk]


class Passage(BaseModel):
    """A chunk as retrieval returns it: the context a prompt is given, and the sources
    an answer names."""

    chunk_id: str
    doc_id: str
    title: str
    source: str
    headings: list[str] = Field(default_factory=list)
    text: str
    score: float = Field(default=0.0, description="BM25 score for the question it was retrieved for.")


class Turn(BaseModel):
    question: str
    answer: str


class QAPair(BaseModel):
    history: list[Turn] = Field(
        default_factory=list, description="Earlier turns, for a multi-turn follow-up question."
    )
    question: str
    answer: str
    chunk_id: str
    doc_id: str
    source: str
    kind: str = Field(description="Which generator rule produced it, e.g. 'definition'.")
    grounding: float = Field(description="Share of answer tokens found in the chunk.")
    phrasing: int = Field(default=0, description="0 for a question as first written; 1, 2, ... for rephrasings.")


class QADataset(BaseModel):
    train: list[QAPair]
    val: list[QAPair]
    test: list[QAPair]
    paraphrase: list[QAPair] = Field(
        default_factory=list,
        description="One held-out phrasing of some training questions: recall of trained facts in new words.",
    )
    dropped: dict[str, int] = Field(default_factory=dict, description="Filter name -> pairs dropped.")
    generator: str = "offline"
    generator_stats: dict[str, int] = Field(
        default_factory=dict, description="Teacher requests, tokens, repairs, cache hits."
    )


class TrainedModel(BaseModel):
    """A fine-tuned model, logged to MLflow: later steps load it by URI, so they need
    not share a disk with the training step."""

    method: str
    base_model: str = Field(description="The base model's name or path, as configured.")
    model_uri: str = Field(description="MLflow URI of the full (merged) model, as it is evaluated and served.")
    adapter_uri: str | None = Field(default=None, description="MLflow URI of the LoRA adapter; None for full.")
    mlflow_run_id: str
    train_loss: float
    steps: int
    seconds: float
    best_val_loss: float | None = None
    history: list[dict[str, float]] = Field(
        default_factory=list, description="The trainer's log: per-step loss, val loss, learning rate."
    )


class EvalRow(BaseModel):
    question: str
    reference: str
    source: str
    doc_id: str = ""
    kind: str = ""
    answers: dict[str, str] = Field(description="Model label -> generated answer.")


class ModelLabel(StrEnum):
    """The models an evaluation compares."""

    CANDIDATE = "candidate"
    BASE = "base"
    PRODUCTION = "production"
    # Also MLflow metric names (eval/<label>/<metric>), which allow no "+".
    CANDIDATE_RETRIEVAL = "candidate_retrieval"
    BASE_RETRIEVAL = "base_retrieval"

    @property
    def retrieval(self) -> bool:
        return self in (ModelLabel.CANDIDATE_RETRIEVAL, ModelLabel.BASE_RETRIEVAL)


class Resampling(StrEnum):
    """What a bootstrap resamples: questions, or whole documents (a cluster bootstrap)."""

    QUESTIONS = "questions"
    DOCUMENTS = "documents"


class Interval(BaseModel):
    """A difference `a - b`, signed so that positive means a is better, with its paired
    bootstrap confidence interval."""

    metric: str
    a: str
    b: str
    value_a: float
    value_b: float
    gain: float
    low: float
    high: float
    confidence: float
    resampled: Resampling = Resampling.QUESTIONS
    clusters: int | None = Field(default=None, description="How many units were resampled.")


class PairwiseResult(BaseModel):
    """LLM-judge preferences between two models, each question asked in both orders.
    A question counts as a win only when the judge prefers the same answer both times."""

    a: str
    b: str
    wins: int
    losses: int
    ties: int
    inconsistent: int = Field(description="Ties caused by the judge flipping with the order.")

    @property
    def n(self) -> int:
        return self.wins + self.losses + self.ties


class EvalReport(BaseModel):
    question_set: str = Field(default="test", description="test, paraphrase, or a gold set's name.")
    gated: ModelLabel = Field(
        default=ModelLabel.CANDIDATE, description="The system promotion is about: the fine-tuned model as served."
    )
    baseline: ModelLabel = Field(default=ModelLabel.BASE, description="The base model in the same mode.")
    retrieval_recall: float | None = Field(
        default=None, description="Share of questions whose source chunk is among the passages retrieved."
    )
    metrics: dict[str, dict[str, float]] = Field(description="Model label -> metric -> value.")
    models: dict[str, str] = Field(default_factory=dict, description="Model label -> the model it scored.")
    reused: list[str] = Field(default_factory=list, description="Labels whose answers came from the answer cache.")
    comparisons: list[Interval] = Field(
        default_factory=list,
        description="The gated system minus each other one, per metric, with bootstrap CIs over questions and "
        "documents.",
    )
    by_source: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="Source -> 'n' and model label -> primary metric on its questions."
    )
    pairwise: PairwiseResult | None = None
    general: list[EvalRow] = Field(default_factory=list, description="Forgetting-guard answers.")
    rows: list[EvalRow]
    other_sets: list[EvalReport] = Field(
        default_factory=list, description="The same systems on the other question sets (the gate uses this one)."
    )


class RegisteredModel(BaseModel):
    name: str
    version: str
    model_uri: str


class PromotionDecision(BaseModel):
    promoted: bool
    reason: str
    metric: str
    candidate: float
    base: float
    production: float | None = None
    production_version: str | None = None
    version: str
    versus_base: Interval | None = None
    versus_production: Interval | None = None
    general_drop: float | None = Field(default=None, description="Base minus candidate general-QA accuracy.")


class ConversationRecord(BaseModel):
    """One exchange in the served API's opt-in conversation log (JSONL), which ingest
    reads back as a source of training data."""

    time: datetime
    request_id: str
    key: str
    model: str
    version: str | None = None
    messages: list[dict[str, str]]
    answer: str
