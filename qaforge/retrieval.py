"""Retrieval: a BM25 index (bm25s) over the chunks, English stop words removed and
words stemmed, so "charging" finds "charge". The pipeline builds it once per chunk
set; it is logged with the model it was trained and evaluated with, and the server
loads that copy, so a model always answers from the index that belongs to it."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import bm25s
import numpy as np
import snowballstemmer

from qaforge.records import ChunkSet, Passage

PASSAGES_FILE = "passages.jsonl"


@cache
def _stemmer() -> snowballstemmer.stemmer:
    return snowballstemmer.stemmer("english")


def _tokens(texts: list[str]) -> list[list[str]]:
    # NLTK's list rather than Lucene's 33 words: questions are full of "how", "does",
    # "what", "I", "my", which Lucene's keeps and which then match whatever page talks to
    # its reader (recall@2 of the sample corpus's questions 0.81 -> 0.86, bench/RESULTS.md).
    return bm25s.tokenize(texts, stopwords="en_plus", stemmer=_stemmer(), return_ids=False, show_progress=False)


# What a question's frame asks for, in the words an answer uses: "How long does it take
# ...?" is answered in minutes and hours, which BM25 cannot know, and its "long" and
# "take" match whatever page says "how long charging takes" instead. English only, no
# domain words; measured on the three corpora's questions, it moves no other question.
_QUESTION_FRAMES = [
    (re.compile(r"\bhow long\b", re.IGNORECASE), "time minutes hours"),
    (re.compile(r"\bhow much\b.*\b(?:cost|pay|charge)s?\b", re.IGNORECASE), "cost price"),
    (re.compile(r"\bhow far\b", re.IGNORECASE), "range distance"),
    (re.compile(r"\bhow often\b", re.IGNORECASE), "every interval"),
    (re.compile(r"\bhow heavy\b|\bhow much does (?:it|the \w+) weigh\b", re.IGNORECASE), "weight"),
]


def with_answer_words(question: str) -> str:
    """The question with the words its frame is answered in; `prompting.retrieval_query`
    adds them to the turn a conversation asks now."""
    return " ".join([question, *(words for frame, words in _QUESTION_FRAMES if frame.search(question))])


def indexed_text(passage: Passage) -> str:
    """What BM25 matches against: the title and headings name the topic of a chunk
    whose text may never repeat it, and count twice, as a word there says more about
    the chunk than one in passing (page recall@2 of the manual's 40 user questions
    0.78 -> 0.83; recall@2 of the three corpora's generated questions up 0.01-0.02)."""
    return "\n".join([passage.title, *passage.headings] * 2 + [passage.text])


class Retriever:
    """Top-k passages for a question. Passages with no query word in common score 0
    and are never returned, so an off-topic question gets no context."""

    def __init__(self, passages: list[Passage], bm25: bm25s.BM25) -> None:
        self.passages, self.bm25 = passages, bm25
        self.by_id = {p.chunk_id: p for p in passages}

    @classmethod
    def build(cls, chunks: ChunkSet) -> Retriever:
        if not chunks.chunks:
            raise ValueError("cannot build a retrieval index over no chunks")
        passages = [
            Passage(chunk_id=c.chunk_id, doc_id=c.doc_id, title=c.title, source=c.source, headings=c.headings,
                    text=c.text)
            for c in chunks.chunks
        ]
        bm25 = bm25s.BM25()
        bm25.index(_tokens([indexed_text(p) for p in passages]), show_progress=False)
        return cls(passages, bm25)

    def __len__(self) -> int:
        return len(self.passages)

    def search_many(self, queries: Sequence[str], k: int, exclude: Sequence[str] = ()) -> list[list[Passage]]:
        """The best `k` passages for each query, best first, with their scores;
        `exclude` names one chunk id per query to leave out (or "" for none)."""
        if not queries:
            return []
        k_asked = min(len(self.passages), k + (1 if exclude else 0))
        found = self.bm25.retrieve(_tokens(list(queries)), k=k_asked, show_progress=False,
                                   n_threads=1)
        results = []
        for i, (ids, scores) in enumerate(zip(found.documents, found.scores)):
            skip = exclude[i] if exclude else ""
            hits = [
                self.passages[j].model_copy(update={"score": round(float(s), 4)})
                for j, s in zip(ids, scores)
                if s > 0 and self.passages[j].chunk_id != skip
            ]
            results.append(hits[:k])
        return results

    def search(self, query: str, k: int) -> list[Passage]:
        return self.search_many([query], k)[0]

    def recall(self, questions: Sequence[str], chunk_ids: Sequence[str], k: int) -> float | None:
        """Share of the questions whose source chunk is among their top `k` passages
        (questions without a source chunk left out); None when none has one."""
        asked = [(q, c) for q, c in zip(questions, chunk_ids) if c in self.by_id]
        if not asked:
            return None
        hits = self.search_many([q for q, _ in asked], k)
        return float(np.mean([c in {p.chunk_id for p in found} for (_, c), found in zip(asked, hits)]))

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        self.bm25.save(str(directory), show_progress=False)
        (directory / PASSAGES_FILE).write_text("".join(p.model_dump_json() + "\n" for p in self.passages))
        return directory

    @classmethod
    def load(cls, directory: Path) -> Retriever:
        lines = (Path(directory) / PASSAGES_FILE).read_text().splitlines()
        passages = [Passage.model_validate(json.loads(line)) for line in lines if line]
        return cls(passages, bm25s.BM25.load(str(directory), show_progress=False))
