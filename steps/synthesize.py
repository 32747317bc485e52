"""Synthesize: grounded question/answer pairs from chunks, split by document.

The offline generator needs no model and no network: it turns definitions,
subject-verb facts, advice, table cells and section openings into questions
whose answers are full sentences taken from (or built from) the chunk itself.
"""

from __future__ import annotations

import random
import re
import tempfile
from collections import Counter
from dataclasses import dataclass
from collections.abc import Iterator
from pathlib import Path

import mlflow
from datasketch import MinHash, MinHashLSH
from zenml import step

from qaforge.config import PromptConfig, SynthesisConfig
from qaforge.exports import dataset_card, write_exports
from qaforge.records import Chunk, ChunkSet, QADataset, QAPair, Turn
from qaforge.teacher import teacher_pairs

STOPWORDS = frozenset(
    "a an the of to in on for and or is are be by with at as it its this that these those from "
    "into than then can should must may do does what which who how when where why about".split()
)
# Verbs that reliably end a subject noun phrase in expository text: (3rd-person form, base form).
FACT_VERBS = {
    v: b
    for b in (
        "use deliver need require provide support take add reduce increase cost allow let "
        "connect carry include offer draw limit protect prevent measure define specify cover "
        "give store send control reach"
    ).split()
    for v in (b, b + "es" if b.endswith(("s", "sh", "ch", "x", "z")) else b + "s")
}
# Sentence openers that cannot start a subject noun phrase (pronouns, imperatives).
NOT_SUBJECTS = frozenset(
    "it this that these they those there he she you we if when while because although "
    "add use check make keep avoid plug set turn ask install choose follow do never always "
    "contact try confirm ensure verify move wait park unplug select note remember consider "
    "look call open close start stop remove replace reset press tap read see find divide "
    "multiply mount run charge".split()
)

_DEFINITION = re.compile(
    r"^(?:(?:An?|The) )?(?P<term>[A-Z0-9][^,;:()]{1,60}?)(?: \([^)]{1,30}\))? "
    r"(?P<verb>is|are|refers to|means) (?P<rest>.{10,})$"
)
_ADVICE = re.compile(r"^(?P<subject>[A-Z][^,;:]{2,50}?) (?P<modal>should|must) (?P<rest>.{10,})$")
# Docling serializes a table row as "Row key, Column = value. Row key, Column = value."
_TABLE_CELL_BREAK = re.compile(r"\. (?=[^=]{1,80}? = )")
_STEP = re.compile(r"^\d{1,2}[.)] \S")
_STEP_SPLIT = re.compile(r" (?=\d{1,2}[.)] )")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_WORD = re.compile(r"[a-z0-9]+(?:\.[0-9]+)?")


def content_tokens(text: str) -> list[str]:
    return [t for t in _WORD.findall(text.lower()) if t not in STOPWORDS]


def grounding(answer: str, context: str) -> float:
    """Share of the answer's content tokens that occur in the context."""
    tokens = content_tokens(answer)
    if not tokens:
        return 0.0
    vocabulary = set(content_tokens(context))
    return sum(t in vocabulary for t in tokens) / len(tokens)


def sentences(text: str) -> list[str]:
    """Sentences of a chunk; lines broken mid-sentence (as in PDFs) are rejoined."""
    paragraphs: list[str] = []
    for line in (ln.strip() for ln in text.splitlines()):
        if not line:
            continue
        if paragraphs and not paragraphs[-1].endswith((".", "!", "?", ":")) and line[0].islower():
            paragraphs[-1] += " " + line
        else:
            paragraphs.append(line.lstrip("-*• ").strip())
    return [s.strip() for p in paragraphs for s in _SENTENCE_END.split(p) if s.strip()]


def _lower_first(phrase: str) -> str:
    """Lower-case a sentence-initial capital, but not in acronyms or names such as
    'CCS2', 'Level 2' or 'Open Charge Point Protocol'."""
    words = phrase.split()
    first, second = words[0], words[1] if len(words) > 1 else ""
    if (
        (len(first) > 1 and first[1].isupper())
        or any(c.isdigit() for c in first)
        or second[:1].isdigit()
        or second[:1].isupper()
    ):
        return phrase
    return phrase[0].lower() + phrase[1:]


def _definition(sentence: str) -> tuple[str, str] | None:
    match = _DEFINITION.match(sentence)
    if not match or match["term"].split()[0].lower() in NOT_SUBJECTS:
        return None
    verb = "are" if match["verb"] == "are" else "is"
    return f"What {verb} {_lower_first(match['term'])}?", sentence


def _fact_parts(sentence: str) -> tuple[str, str, str] | None:
    """(subject, auxiliary, base verb) of a subject-verb fact sentence."""
    words = sentence.rstrip(".").split()
    for i, word in enumerate(words[1:8], start=1):
        base = FACT_VERBS.get(word)
        if base is None:
            continue
        subject = " ".join(words[:i])
        if (
            words[0].lower() in NOT_SUBJECTS
            or not subject[0].isupper()
            or "," in subject
            or {"that", "which", "who"} & set(words[:i])
        ):
            return None
        return subject, "does" if word != base else "do", base
    return None


def _fact(sentence: str) -> tuple[str, str] | None:
    if parts := _fact_parts(sentence):
        subject, auxiliary, base = parts
        return f"What {auxiliary} {_lower_first(subject)} {base}?", sentence
    return None


def _without_article(phrase: str) -> str:
    return re.sub(r"^(an?|the) ", "", phrase.lower())


def follow_ups_for_chunk(chunk: Chunk) -> list[tuple[str, str, Turn]]:
    """Multi-turn pairs: after "What is X?", a later fact about X (named again, or
    as "It"/"They" right after the definition) asked with a pronoun."""
    defined: dict[str, Turn] = {}
    previous: Turn | None = None
    found: list[tuple[str, str, Turn]] = []
    for sentence in sentences(chunk.text):
        words = sentence.split()
        if (pair := _definition(sentence)) is not None:
            previous = Turn(question=pair[0], answer=pair[1])
            defined[_without_article(_DEFINITION.match(sentence)["term"])] = previous
            continue
        if previous and len(words) > 3 and words[0] in ("It", "They") and words[1] in FACT_VERBS:
            auxiliary = "does" if words[0] == "It" else "do"
            found.append((f"What {auxiliary} {words[0].lower()} {FACT_VERBS[words[1]]}?", sentence, previous))
        elif (parts := _fact_parts(sentence)) and (first := defined.get(_without_article(parts[0]))):
            _, auxiliary, base = parts
            pronoun = "it" if auxiliary == "does" else "they"
            found.append((f"What {auxiliary} {pronoun} {base}?", sentence, first))
        previous = None
    return found


def _advice(sentence: str, topic: str) -> tuple[str, str] | None:
    match = _ADVICE.match(sentence)
    if not match or match["subject"].split()[0].lower() in NOT_SUBJECTS:
        return None
    return f"When it comes to {_lower_first(topic)}, what {match['modal']} {_lower_first(match['subject'])} do?", sentence


def _table_cells(text: str) -> Iterator[tuple[str, str]]:
    """(question, answer) per table cell; cells cut off at a chunk edge are skipped."""
    for line in text.splitlines():
        line = line.replace("**", "").strip(" |")
        if " = " not in line:
            continue
        for cell in _TABLE_CELL_BREAK.split(line):
            head, _, value = cell.partition(" = ")
            key, _, column = head.rpartition(", ")
            value = value.strip().rstrip(".")
            if (
                not (key and column and value)
                or not key[0].isupper()
                or ":" in key
                or "=" in value
                or len(column.split()) > 6
            ):
                continue
            yield (
                f"What is the {_lower_first(column)} for {key}?",
                f"For {key}, the {_lower_first(column)} is {value}.",
            )


def pairs_for_chunk(chunk: Chunk, limit: int) -> list[tuple[str, str, str]]:
    """Candidate (kind, question, answer) triples for one chunk, most specific first."""
    topic = chunk.headings[-1] if chunk.headings else chunk.title
    found = [("table", q, a) for q, a in _table_cells(chunk.text)]
    for sentence in sentences(chunk.text):
        if "=" in sentence or not 5 <= len(sentence.split()) <= 60:
            continue
        for kind, rule in (
            ("definition", _definition),
            ("fact", _fact),
            ("advice", lambda s: _advice(s, topic)),
        ):
            if pair := rule(sentence):
                found.append((kind, *pair))
                break
    steps = [ln.strip() for ln in chunk.text.splitlines() if _STEP.match(ln.strip())]
    if len(steps) >= 2:
        found.append(("procedure", f"What are the steps for {_lower_first(topic)}?", " ".join(steps)))
    opening = " ".join(sentences(chunk.text)[:2])
    if chunk.headings and 8 <= len(opening.split()) <= 80:
        found.append(("section", f"What does the {chunk.title} material say about {topic}?", opening))
    return found[:limit]


class QuestionIndex:
    """Finds questions that repeat an earlier one in other words: Jaccard similarity
    of their content words, with MinHash LSH to find candidates at scale."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.lsh = MinHashLSH(threshold=threshold, num_perm=64)
        self.words: dict[str, set[str]] = {}

    def seen(self, question: str) -> bool:
        words = set(content_tokens(question)) or set(_WORD.findall(question.lower()))
        signature = MinHash(num_perm=64)
        for word in words:
            signature.update(word.encode())
        for key in self.lsh.query(signature):
            other = self.words[key]
            if len(words & other) / len(words | other) >= self.threshold:
                return True
        key = str(len(self.words))
        self.words[key] = words
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


def styled(answer: str, kind: str, style: str) -> str:
    """An offline answer in the configured style."""
    if style == "brief":
        return sentences(answer)[0] if sentences(answer) else answer
    if style == "markdown" and kind == "procedure":
        return "\n".join(_STEP_SPLIT.split(answer))
    return answer


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
