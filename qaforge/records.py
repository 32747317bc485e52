"""Typed records passed between pipeline stages, defined once.

Each stage returns one container record (Corpus, ChunkSet, QADataset, ...) so
ZenML stores it as a single JSON artifact instead of one artifact per item.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, NamedTuple

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


UNANSWERABLE = "unanswerable"  # the kind of a configured question the sources do not answer


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

    @property
    def unanswerable(self) -> bool:
        return self.kind == UNANSWERABLE


class ImportedPairs(BaseModel):
    """The pairs of `sources.qa`, read at ingest (which always runs) so that an edited
    file reaches synthesis even when the documents did not change."""

    pairs: list[QAPair] = Field(default_factory=list)


class QuestionSet(StrEnum):
    """The question sets qaforge makes; users' gold sets take any other name."""

    TEST = "test"  # questions about documents no model trained on
    KNOWLEDGE = "knowledge"  # facts of training documents, asked and answered in words never trained on
    MEMORISATION = "memorisation"  # trained questions reworded, whose answers are training targets


# Names a gold set may not take: qaforge's own sets, the one they replaced, and the
# MLflow metric scopes of the forgetting guard and of speed.
RESERVED_SET_NAMES = frozenset({*QuestionSet, "paraphrase", "guard", "speed"})


class QADataset(BaseModel):
    train: list[QAPair]
    val: list[QAPair]
    test: list[QAPair]
    knowledge: list[QAPair] = Field(
        default_factory=list,
        description="Questions about training documents held out of training with every phrasing, whose answer "
        "sentences no training answer contains: did the model learn (or can it read) the fact?",
    )
    memorisation: list[QAPair] = Field(
        default_factory=list,
        description="One held-out phrasing of training questions whose other phrasings, with the same answer, "
        "are trained on: recall of trained answers in new words.",
    )
    dropped: dict[str, int] = Field(default_factory=dict, description="Filter name -> pairs dropped.")
    generator: str = "offline"
    generator_stats: dict[str, int] = Field(
        default_factory=dict, description="Teacher requests, tokens, repairs, cache hits."
    )

    def question_set(self, name: QuestionSet) -> list[QAPair]:
        return getattr(self, name.value)


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
    """The systems an evaluation compares: a model, asked closed book or with passages."""

    CANDIDATE = "candidate"
    BASE = "base"
    PRODUCTION = "production"  # as it is served: its own system prompt, top_k and index
    # Also parts of MLflow metric names, which allow no "+".
    CANDIDATE_RETRIEVAL = "candidate_retrieval"
    BASE_RETRIEVAL = "base_retrieval"

    @property
    def retrieval(self) -> bool:
        return self in (ModelLabel.CANDIDATE_RETRIEVAL, ModelLabel.BASE_RETRIEVAL)


class Resampling(StrEnum):
    """What a bootstrap resamples: single questions, or whole clusters of them (the
    questions about one document, or of one group or category of a gold set, are not
    independent of each other)."""

    QUESTIONS = "questions"
    DOCUMENTS = "documents"
    GROUPS = "groups"
    CATEGORIES = "categories"


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


class SetReport(BaseModel):
    """Every system on one question set."""

    name: str
    unit: Resampling = Field(description="What its intervals resample besides single questions.")
    units: int = Field(description="How many of them there are.")
    retrieval_recall: float | None = Field(
        default=None, description="Share of questions whose source chunk is among the passages retrieved."
    )
    metrics: dict[str, dict[str, float]] = Field(description="System label -> metric -> value.")
    comparisons: list[Interval] = Field(
        default_factory=list,
        description="The gated system minus each other one, per metric, over resampled questions and units.",
    )
    by_source: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="Source -> 'n' and system label -> primary metric on its questions."
    )
    pairwise: PairwiseResult | None = None
    rows: list[EvalRow]

    def gain(self, metric: str, other: str) -> Interval | None:
        """The gated system's gain over `other` with the more cautious of its intervals
        (the lower lower bound): over units, unless single questions are wider."""
        found = [c for c in self.comparisons if c.metric == metric and c.b == other]
        return min(found, key=lambda c: (c.low, c.resampled == Resampling.QUESTIONS), default=None)


class GuardReport(BaseModel):
    """The forgetting guard: general questions outside the domain, asked closed book,
    since forgetting is about the weights."""

    accuracy: dict[str, float] = Field(description="System label -> share answered right.")
    comparisons: list[Interval] = Field(default_factory=list)
    rows: list[EvalRow]


class EvalReport(BaseModel):
    gated: ModelLabel = Field(
        default=ModelLabel.CANDIDATE, description="The system promotion is about: the fine-tuned model as served."
    )
    baseline: ModelLabel = Field(default=ModelLabel.BASE, description="The base model in the same mode.")
    models: dict[str, str] = Field(default_factory=dict, description="System label -> the model it scored.")
    reused: list[str] = Field(default_factory=list, description="Labels whose answers came from the answer cache.")
    sets: dict[str, SetReport] = Field(description="Every question set scored, by name.")
    gate_set: str | None = Field(
        description="The set the gate decides on; None when no set has enough units for an interval to mean "
        "anything."
    )
    gate_note: str = Field(default="", description="Why the gate decides on that set, or on none.")
    guard: GuardReport | None = None
    speed: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="System label -> latency and tokens/s, from the serving engine."
    )
    seconds: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="Question set (or guard) -> system label -> seconds spent answering it (0: from the cache).",
    )

    @property
    def decided_on(self) -> SetReport | None:
        return self.sets[self.gate_set] if self.gate_set is not None else None

    def general_drop(self) -> float | None:
        """Base minus gated general-QA accuracy (the guard asks each model closed book)."""
        if self.guard is None or self.baseline not in self.guard.accuracy:
            return None
        return self.guard.accuracy[self.baseline] - self.guard.accuracy[self.gated]


class EvalMetric(NamedTuple):
    """An evaluation number's MLflow metric name, `eval/<scope>/<system>/<metric>`:
    written and read here only. The scope is a question set, `guard` or `speed`; a gain
    is the system `gain_over_<other>`, its metric suffixed with the unit resampled
    (`_by_documents`, ...) and `_low`/`_high` for its bounds."""

    scope: str
    system: str
    metric: str

    def __str__(self) -> str:
        return f"eval/{self.scope}/{self.system}/{self.metric}"

    @classmethod
    def parse(cls, name: str) -> EvalMetric | None:
        parts = name.split("/")
        return cls(*parts[1:]) if len(parts) == 4 and parts[0] == "eval" else None

    @classmethod
    def gains(cls, scope: str, interval: Interval) -> dict[str, float]:
        """The metrics of a gain and its bounds."""
        unit = "" if interval.resampled == Resampling.QUESTIONS else f"_by_{interval.resampled}"
        system, metric = f"gain_over_{interval.b}", f"{interval.metric}{unit}"
        return {str(cls(scope, system, metric + suffix)): value
                for suffix, value in (("", interval.gain), ("_low", interval.low), ("_high", interval.high))}


class RegisteredModel(BaseModel):
    name: str
    version: str
    model_uri: str


class PromotionDecision(BaseModel):
    promoted: bool
    reason: str
    metric: str
    question_set: str | None = Field(default=None, description="The set decided on; None when none could decide.")
    candidate: float | None = None
    base: float | None = None
    production: float | None = None
    production_version: str | None = None
    version: str
    versus_base: Interval | None = None
    versus_production: Interval | None = None
    general_drop: float | None = Field(default=None, description="Base minus candidate general-QA accuracy.")


def joined_text_parts(content: object) -> object:
    """A chat message's `content` given as a list of text parts, as newer SDKs, many UIs
    and fine-tuning files write it, is the text the parts make, joined by new lines as
    vLLM joins them. A part the model cannot read (an image, audio, a file) is refused
    by name."""
    if not isinstance(content, list):
        return content
    texts = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else type(part).__name__
        if kind != "text":
            raise ValueError(f"part {i} is of type {kind!r}: this model reads text only, so `content` is a string "
                             "or a list of {\"type\": \"text\", \"text\": ...} parts")
        if not isinstance(part.get("text"), str):
            raise ValueError(f"part {i} has no `text` string")
        texts.append(part["text"])
    return "\n".join(texts)


class ConversationRecord(BaseModel):
    """One exchange in the served API's opt-in conversation log (JSONL): the whole
    conversation in OpenAI's messages shape, ending with the answer (earlier answers
    carry `"weight": 0`: each was logged on its own line), so that `sources.qa` imports
    it; `sources.files` reads it as a document of questions and answers."""

    time: datetime
    request_id: str
    key: str
    model: str
    version: str | None = None
    messages: list[dict[str, Any]]
    answer: str


class Rating(StrEnum):
    UP = "up"
    DOWN = "down"


class FeedbackRecord(BaseModel):
    """A rating of one answer, by the request that produced it (serving.feedback_log)."""

    time: datetime
    request_id: str
    key: str
    rating: Rating


@dataclass(frozen=True)
class ModelsUri:
    """A registry URI, parsed in one place: `models:/<name>/<version>` or
    `models:/<name>@<alias>`. A logged model's own URI (`models:/m-<id>`) has neither."""

    name: str
    version: str | None = None
    alias: str | None = None

    @classmethod
    def parse(cls, uri: str) -> ModelsUri | None:
        if not uri.startswith("models:/"):
            return None
        rest = uri.removeprefix("models:/")
        name, sep, alias = rest.partition("@")
        if sep:
            return cls(name, alias=alias)
        name, sep, version = rest.partition("/")
        return cls(name, version=version) if sep else None

    def __str__(self) -> str:
        return f"models:/{self.name}" + (f"@{self.alias}" if self.alias else f"/{self.version}")


def is_mlflow_uri(location: str) -> bool:
    return location.startswith(("runs:/", "models:/", "mlflow-artifacts:/"))


@dataclass(frozen=True)
class ModelRef:
    """A model to evaluate: a local folder or an MLflow model URI. `identity` names
    weights that never change (the base model, a logged model), so that their answers
    can be cached; a registered version keeps the identity it had as a candidate, so
    production is not asked again what it answered then."""

    location: str
    identity: str | None = None
