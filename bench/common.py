"""The embedded default's data for benchmarks: configs/default.yaml's (or another run
config's) sources, ingested, chunked and turned into QA pairs, outside ZenML."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from qaforge.chunking import chunk_corpus
from qaforge.config import QAForgeConfig, load_config
from qaforge.ingest import ingest
from qaforge.modeling import load_tokenizer, resolve_base_model
from qaforge.records import ChunkSet, QADataset
from qaforge.synthesis import synthesize

REPO = Path(__file__).resolve().parents[1]


def default_config(path: Path = REPO / "configs" / "default.yaml") -> QAForgeConfig:
    """A run config (configs/default.yaml unless given) with its relative paths taken
    from the repository root."""
    cfg = load_config(path)
    gold = [g.model_copy(update={"path": REPO / g.path}) for g in cfg.evaluation.gold]
    return cfg.model_copy(update={
        "model": cfg.model.model_copy(update={"cache_dir": REPO / cfg.model.cache_dir}),
        "evaluation": cfg.evaluation.model_copy(update={"gold": gold}),
    })


def default_chunks(cfg: QAForgeConfig) -> ChunkSet:
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        sources = cfg.sources.model_copy(
            update={
                "web": [w.model_copy(update={"serve_dir": REPO / w.serve_dir}) for w in cfg.sources.web],
                "files": [REPO / f for f in cfg.sources.files],
                "state_dir": Path(tmp),
            }
        )
        corpus, _ = ingest(sources)
    logging.disable(logging.NOTSET)
    tokenizer = load_tokenizer(resolve_base_model(cfg.model))
    return chunk_corpus(corpus, tokenizer, cfg.chunking.max_tokens)


def default_dataset(cfg: QAForgeConfig) -> QADataset:
    return synthesize(default_chunks(cfg), cfg.synthesis)
