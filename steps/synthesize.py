"""Synthesize: question/answer pairs from chunks (the offline generator or a
teacher LLM), filtered for quality, split by document, exported and logged."""

from __future__ import annotations

import random
import re
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import mlflow
from datasketch import MinHash, MinHashLSH
from zenml import step

from qaforge.config import PromptConfig, SynthesisConfig
from qaforge.exports import dataset_card, write_exports
from qaforge.offline_qa import content_tokens, follow_ups_for_chunk, pairs_for_chunk, styled, words
from qaforge.records import Chunk, ChunkSet, QADataset, QAPair, Turn
from qaforge.teacher import teacher_pairs


def grounding(answer: str, context: str) -> float:
    """Share of the answer's content tokens that occur in the context."""
    tokens = content_tokens(answer)
    if not tokens:
        return 0.0
    vocabulary = set(content_tokens(context))
    return sum(t in vocabulary for t in tokens) / len(tokens)


class QuestionIndex:
    """Finds questions that repeat an earlier one in other words: Jaccard similarity
    of their content words, with MinHash LSH to find candidates at scale."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.lsh = MinHashLSH(threshold=threshold, num_perm=64)
        self.words: dict[str, set[str]] = {}

    def seen(self, question: str) -> bool:
        tokens = set(content_tokens(question)) or set(words(question))
        signature = MinHash(num_perm=64)
        for token in tokens:
            signature.update(token.encode())
        for key in self.lsh.query(signature):
            other = self.words[key]
            if len(tokens & other) / len(tokens | other) >= self.threshold:
                return True
        key = str(len(self.words))
        self.words[key] = tokens
        self.lsh.insert(key, signature)
        return False


REFUSAL = re.compile(
    r"\b(i (do not|don't) know|cannot answer|can't answer|not (mentioned|provided|stated|given) in)\b",
    re.IGNORECASE,
)


ANSWER_STYLES = {
    "sentence": "one or two full sentences",
    "brief": "one short sentence",
    "markdown": "Markdown, with a numbered or bulleted list where the answer has several parts",
}


@dataclass(frozen=True)
class Candidate:
    chunk: Chunk
    kind: str
    question: str
    answer: str
    history: tuple[Turn, ...] = ()


def candidate_pairs(chunks: ChunkSet, cfg: SynthesisConfig) -> tuple[list[Candidate], dict[str, int]]:
    """Candidate pairs from the configured generator, and its usage counts."""
    found: list[Candidate] = []
    if cfg.generator == "teacher":
        by_chunk, usage = teacher_pairs(
            chunks.chunks, cfg.teacher, Path(cfg.cache_dir) / "teacher", ANSWER_STYLES[cfg.answer_style]
        )
        for chunk in chunks.chunks:
            for p in by_chunk.get(chunk.chunk_id, []):
                found.append(Candidate(chunk, p.style, p.question, p.answer))
                if p.follow_up_question and p.follow_up_answer:
                    first = Turn(question=p.question, answer=p.answer)
                    found.append(Candidate(chunk, "follow-up", p.follow_up_question, p.follow_up_answer, (first,)))
        stats = {k: v for k, v in vars(usage).items() if isinstance(v, int)}
        return found, {**stats, "failed_chunks": len(usage.failed_chunks)}
    for chunk in chunks.chunks:
        for kind, question, answer in pairs_for_chunk(chunk, cfg.max_pairs_per_chunk):
            found.append(Candidate(chunk, kind, question, styled(answer, kind, cfg.answer_style)))
        for question, answer, first in follow_ups_for_chunk(chunk):
            found.append(
                Candidate(chunk, "follow-up", question, styled(answer, "fact", cfg.answer_style), (first,))
            )
    return found, {}


def generate_pairs(chunks: ChunkSet, cfg: SynthesisConfig) -> tuple[list[QAPair], Counter, dict[str, int]]:
    """Generated pairs that pass the filters; drops are counted per filter."""
    found, stats = candidate_pairs(chunks, cfg)
    pairs: list[QAPair] = []
    dropped: Counter = Counter({"judge": stats["judge_rejected"]} if stats.get("judge_rejected") else {})
    questions = QuestionIndex(cfg.max_question_similarity)
    for candidate in found:
        chunk, kind = candidate.chunk, candidate.kind
        question, answer = candidate.question.strip(), candidate.answer.strip()
        score = grounding(answer, chunk.text)
        if not question or not answer:
            dropped["empty"] += 1
        elif REFUSAL.search(answer):
            dropped["refusal"] += 1
        elif score < cfg.min_grounding:
            dropped["ungrounded"] += 1
        elif not cfg.min_answer_words <= len(answer.split()) <= cfg.max_answer_words or len(question.split()) > 40:
            dropped["length"] += 1
        # A follow-up is only a repeat if its whole conversation is.
        elif questions.seen(" ".join([*(t.question for t in candidate.history), question])):
            dropped["duplicate_question"] += 1
        else:
            pairs.append(
                QAPair(
                    history=list(candidate.history),
                    question=question,
                    answer=answer,
                    chunk_id=chunk.chunk_id,
                    doc_id=chunk.doc_id,
                    source=chunk.source,
                    kind=kind,
                    grounding=round(score, 3),
                )
            )
    return pairs, dropped, stats


def split_by_document(pairs: list[QAPair], cfg: SynthesisConfig) -> tuple[list, list, list]:
    """Whole documents go to test, then val, then train, in a seeded order, until
    each split holds its share of pairs; no document lands in two splits."""
    per_doc = Counter(p.doc_id for p in pairs)
    doc_ids = sorted(per_doc)
    random.Random(cfg.seed).shuffle(doc_ids)
    total = len(pairs)
    assignment: dict[str, str] = {}
    filled = Counter()
    for doc_id in doc_ids:
        for split, share in (("test", cfg.split.test), ("val", cfg.split.val)):
            if filled[split] < share * total and filled[split] + per_doc[doc_id] <= share * total * 1.5:
                break
        else:
            split = "train"
        assignment[doc_id] = split
        filled[split] += per_doc[doc_id]
    buckets: dict[str, list[QAPair]] = {"train": [], "val": [], "test": []}
    for pair in pairs:
        buckets[assignment[pair.doc_id]].append(pair)
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
            kind="unanswerable",
            grounding=0.0,
        )
        for i, question in enumerate(cfg.unanswerable)
    ]


def synthesize(chunks: ChunkSet, cfg: SynthesisConfig) -> QADataset:
    pairs, dropped, stats = generate_pairs(chunks, cfg)
    train, val, test = split_by_document(pairs, cfg)
    if cfg.unanswerable:
        extra = split_by_document(unanswerable_pairs(cfg), cfg)
        train, val, test = train + extra[0], val + extra[1], test + extra[2]
    if not train or not test:
        raise RuntimeError(
            f"too little data to split by document: {len(pairs)} pairs from "
            f"{len({p.doc_id for p in pairs})} documents gave train={len(train)}, test={len(test)}; "
            "add sources or lower synthesis.min_grounding"
        )
    return QADataset(
        train=train, val=val, test=test, dropped=dict(dropped), generator=cfg.generator, generator_stats=stats
    )


def log_dataset(data: QADataset, system_prompt: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        write_exports(data, system_prompt, Path(tmp))
        mlflow.log_artifacts(tmp, "dataset")
    mlflow.log_text(dataset_card(data), "dataset/README.md")
    mlflow.log_metrics(
        {
            **{f"data/{split}_pairs": len(getattr(data, split)) for split in ("train", "val", "test")},
            **{f"data/dropped/{k}": v for k, v in data.dropped.items()},
            **{f"data/generator/{k}": v for k, v in data.generator_stats.items()},
        }
    )


@step(experiment_tracker=True)
def synthesize_step(chunks: ChunkSet, synthesis: SynthesisConfig, prompt: PromptConfig) -> QADataset:
    data = synthesize(chunks, synthesis)
    log_dataset(data, prompt.system_prompt)
    return data
