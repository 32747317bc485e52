"""Chunk: split Documents with docling's HybridChunker, counting tokens with the
base model's own tokenizer. Chunks of a document already chunked with the same
settings are read back instead of recomputed."""

from __future__ import annotations

import hashlib
from pathlib import Path

from docling_core.transforms.chunker import DocChunk
from docling_core.transforms.chunker.hybrid_chunker import HybridChunker
from docling_core.transforms.chunker.tokenizer.huggingface import HuggingFaceTokenizer
from docling_core.types.doc import DoclingDocument
from transformers import PreTrainedTokenizerBase

from qaforge.fsutil import write_atomic
from qaforge.records import Chunk, ChunkSet, Corpus, Document


def chunk_document(doc: Document, chunker: HybridChunker) -> list[Chunk]:
    chunks: list[Chunk] = []
    for i, chunk in enumerate(chunker.chunk(DoclingDocument.model_validate_json(doc.docling_json))):
        piece = DocChunk.model_validate(chunk)  # HybridChunker's chunks carry headings
        if not (text := piece.text.strip()):
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
                doc_content_hash=doc.content_hash,
                fetched_at=doc.fetched_at,
                converter=doc.converter,
                status=doc.status,
            )
        )
    return chunks


def _read_cache(path: Path) -> list[Chunk] | None:
    """Chunks stored by an earlier run; an unreadable or outdated file is ignored."""
    try:
        return ChunkSet.model_validate_json(path.read_text()).chunks
    except (OSError, ValueError):
        return None


def chunk_corpus(
    corpus: Corpus,
    tokenizer: PreTrainedTokenizerBase,
    max_tokens: int,
    cache_dir: Path | None = None,
) -> ChunkSet:
    chunker = HybridChunker(tokenizer=HuggingFaceTokenizer(tokenizer=tokenizer, max_tokens=max_tokens))
    settings = f"{tokenizer.name_or_path}|{max_tokens}"
    chunks: list[Chunk] = []
    for doc in corpus.documents:
        key = hashlib.sha256(f"{doc.doc_id}|{doc.content_hash}|{settings}".encode()).hexdigest()[:24]
        cached = cache_dir / f"{key}.json" if cache_dir else None
        if cached and (earlier := _read_cache(cached)) is not None:
            chunks += earlier
            continue
        pieces = chunk_document(doc, chunker)
        if cached:
            write_atomic(cached, ChunkSet(chunks=pieces).model_dump_json())
        chunks += pieces
    return ChunkSet(chunks=chunks)
