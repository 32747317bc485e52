"""The chunk step: qaforge.chunking with the base model's tokenizer."""

from __future__ import annotations

from zenml import step

from qaforge.chunking import chunk_corpus
from qaforge.config import ChunkingConfig, ModelConfig
from qaforge.modeling import load_tokenizer, resolve_base_model
from qaforge.records import ChunkSet, Corpus


@step
def chunk_step(corpus: Corpus, chunking: ChunkingConfig, model: ModelConfig) -> ChunkSet:
    tokenizer = load_tokenizer(resolve_base_model(model))
    return chunk_corpus(corpus, tokenizer, chunking.max_tokens, chunking.cache_dir)
