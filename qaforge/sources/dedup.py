"""Exact and near-duplicate removal; the first-seen document is kept."""

from __future__ import annotations

import re

from datasketch import MinHash, MinHashLSH

from qaforge.records import Document, Duplicate

NUM_PERM = 128
SHINGLE_WORDS = 5


def minhash(text: str) -> MinHash:
    words = re.findall(r"\w+", text.lower())
    signature = MinHash(num_perm=NUM_PERM)
    for i in range(max(1, len(words) - SHINGLE_WORDS + 1)):
        signature.update(" ".join(words[i : i + SHINGLE_WORDS]).encode())
    return signature


def deduplicate(documents: list[Document], threshold: float) -> tuple[list[Document], list[Duplicate]]:
    kept: list[Document] = []
    duplicates: list[Duplicate] = []
    by_hash: dict[str, Document] = {}
    index = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    signatures: dict[str, MinHash] = {}
    for doc in documents:
        if (first := by_hash.get(doc.content_hash)) is not None:
            duplicates.append(Duplicate(source=doc.source, duplicate_of=first.source, kind="exact", similarity=1.0))
            continue
        signature = minhash(doc.markdown)
        # LSH finds candidates; the estimated Jaccard decides.
        matches = [
            (signatures[key].jaccard(signature), key) for key in index.query(signature)
        ]
        best = max(matches, default=None)
        if best is not None and best[0] >= threshold:
            duplicates.append(
                Duplicate(source=doc.source, duplicate_of=best[1], kind="near", similarity=round(best[0], 3))
            )
            continue
        by_hash[doc.content_hash] = doc
        index.insert(doc.source, signature)
        signatures[doc.source] = signature
        kept.append(doc)
    return kept, duplicates
