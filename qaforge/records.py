"""Typed records passed between pipeline stages, defined once.

Each stage returns one container record (Corpus, ChunkSet, QADataset, ...) so
ZenML stores it as a single JSON artifact instead of one artifact per item.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from pydantic import BaseModel, Field


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Document(BaseModel):
    doc_id: str = Field(description="Stable id derived from the source.")
    source: str = Field(description="URL, or path of a file or of a served-folder page.")
    title: str
    markdown: str
    content_hash: str
    fetched_at: datetime
    converter: str = Field(description="What produced the text, e.g. 'crawl4ai+docling-html'.")
    docling_json: str = Field(repr=False, description="Serialized DoclingDocument, for chunking.")


class IngestFailure(BaseModel):
    source: str
    reason: str


class Corpus(BaseModel):
    documents: list[Document]
    failures: list[IngestFailure] = Field(default_factory=list)


class Chunk(BaseModel):
    chunk_id: str
    doc_id: str
    source: str
    title: str
    headings: list[str]
    text: str
    token_count: int


class ChunkSet(BaseModel):
    chunks: list[Chunk]


class QAPair(BaseModel):
    question: str
    answer: str
    chunk_id: str
    doc_id: str
    source: str
    kind: str = Field(description="Which generator rule produced it, e.g. 'definition'.")
    grounding: float = Field(description="Share of answer tokens found in the chunk.")


class QADataset(BaseModel):
    train: list[QAPair]
    val: list[QAPair]
    test: list[QAPair]
    dropped: dict[str, int] = Field(default_factory=dict, description="Filter name -> pairs dropped.")


class TrainedModel(BaseModel):
    method: str
    base_model_dir: str
    adapter_dir: str
    merged_dir: str
    model_uri: str = Field(description="MLflow URI of the logged merged model.")
    mlflow_run_id: str
    train_loss: float
    steps: int
    seconds: float


class EvalRow(BaseModel):
    question: str
    reference: str
    source: str
    answers: dict[str, str] = Field(description="Model label -> generated answer.")


class EvalReport(BaseModel):
    metrics: dict[str, dict[str, float]] = Field(description="Model label -> metric -> value.")
    rows: list[EvalRow]


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
