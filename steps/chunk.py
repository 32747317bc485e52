"""Chunk: split Documents with docling's HybridChunker, counting tokens with the
base model's own tokenizer."""

from __future__ import annotations

from docling_core.transforms.chunker.hybrid_chunker import HybridChunker
from docling_core.transforms.chunker.tokenizer.huggingface import HuggingFaceTokenizer
from docling_core.types.doc import DoclingDocument
from transformers import PreTrainedTokenizerBase
from zenml import step

from qaforge.config import ChunkingConfig, ModelConfig
from qaforge.modeling import load_tokenizer, resolve_base_model
from qaforge.records import Chunk, ChunkSet, Corpus


def chunk_corpus(corpus: Corpus, tokenizer: PreTrainedTokenizerBase, max_tokens: int) -> ChunkSet:
    chunker = HybridChunker(
        tokenizer=HuggingFaceTokenizer(tokenizer=tokenizer, max_tokens=max_tokens)
    )
    chunks: list[Chunk] = []
    for doc in corpus.documents:
        docling_doc = DoclingDocument.model_validate_json(doc.docling_json)
        for i, piece in enumerate(chunker.chunk(docling_doc)):
            text = piece.text.strip()
            if not text:
                continue
            chunks.append(
                Chunk(
                    chunk_id=f"{doc.doc_id}-{i:04d}",
                    doc_id=doc.doc_id,
                    source=doc.source,
                    title=doc.title,
                    headings=list(piece.meta.headings or []),
                    text=text,
                    token_count=chunker.tokenizer.count_tokens(chunker.contextualize(piece)),
                )
            )
    return ChunkSet(chunks=chunks)


@step
def chunk_step(corpus: Corpus, chunking: ChunkingConfig, model: ModelConfig) -> ChunkSet:
    return chunk_corpus(corpus, load_tokenizer(resolve_base_model(model)), chunking.max_tokens)
