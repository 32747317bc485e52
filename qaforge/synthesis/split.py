"""Train/val/test by document."""

from __future__ import annotations

import hashlib

from qaforge.config import SynthesisConfig
from qaforge.records import UNANSWERABLE, QAPair


def split_of(doc_id: str, cfg: SynthesisConfig) -> str:
    """A document's split, from a hash of its id alone: adding or removing other
    documents never moves it, so a model trained on an earlier run's train split is
    never tested on documents it was trained on."""
    digest = hashlib.sha256(f"{cfg.seed}:{doc_id}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64
    if point < cfg.split.test:
        return "test"
    return "val" if point < cfg.split.test + cfg.split.val else "train"


def split_by_document(pairs: list[QAPair], cfg: SynthesisConfig) -> tuple[list, list, list]:
    """Train, val and test pairs; every document's pairs land in one split."""
    buckets: dict[str, list[QAPair]] = {"train": [], "val": [], "test": []}
    for pair in pairs:
        buckets[split_of(pair.doc_id, cfg)].append(pair)
    return buckets["train"], buckets["val"], buckets["test"]


def unanswerable_pairs(cfg: SynthesisConfig) -> list[QAPair]:
    """The configured out-of-scope questions, each its own pseudo-document so the
    split keeps them apart like any other source."""
    return [
        QAPair(
            question=question,
            answer=cfg.unanswerable_answer,
            chunk_id="",
            doc_id=f"unanswerable-{i:04d}",
            source="(unanswerable)",
            kind=UNANSWERABLE,
            grounding=0.0,
        )
        for i, question in enumerate(cfg.unanswerable)
    ]
