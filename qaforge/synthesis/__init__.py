"""Synthesis: question/answer pairs from chunks (the offline generator or a teacher
LLM), filtered for quality and split by document."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from qaforge.chat_client import Usage
from qaforge.config import Generator, SynthesisConfig
from qaforge.records import Chunk, ChunkSet, QADataset, QAPair, Turn
from qaforge.refusal import is_refusal
from qaforge.synthesis.filters import QuestionIndex, grounding, malformed
from qaforge.synthesis.offline import follow_ups_for_chunk, pairs_for_chunk, sentences, styled
from qaforge.synthesis.split import split_by_document, unanswerable_pairs
from qaforge.synthesis.teacher import teacher_answers, teacher_pairs

USER_QUESTION = "user-question"  # the kind of a pair from synthesis.questions


@dataclass(frozen=True)
class Candidate:
    chunk: Chunk
    kind: str
    question: str
    answer: str
    history: tuple[Turn, ...] = ()
    rephrasings: tuple[str, ...] = ()  # the same question in other words
    teacher: str = ""  # which teacher wrote it, with several


def read_questions(path: Path) -> list[str]:
    """Users' questions, one per line (blank lines and # comments skipped)."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"synthesis.questions: cannot read {path}: {exc}") from None
    questions = [" ".join(line.split()) for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not questions:
        raise ValueError(f"synthesis.questions: {path} holds no question")
    return questions


def _sum_usage(usages: list[Usage]) -> dict[str, int]:
    stats: Counter[str] = Counter()
    for usage in usages:
        stats.update({k: v for k, v in vars(usage).items() if isinstance(v, int)})
        stats["failed_chunks"] += len(usage.failed_chunks)
    return dict(stats)


def teacher_candidates(chunks: ChunkSet, cfg: SynthesisConfig) -> tuple[list[Candidate], dict[str, int]]:
    """Every teacher's pairs for every chunk; with several, each chunk's pairs best
    grounded first, so that of near-duplicate questions the filters keep that one."""
    found: list[Candidate] = []
    usages = []
    for teacher in cfg.all_teachers:
        by_chunk, usage = teacher_pairs(chunks.chunks, teacher, Path(cfg.cache_dir) / "teacher",
                                        cfg.answer_style.wording)
        usages.append(usage)
        for chunk in chunks.chunks:
            for p in by_chunk.get(chunk.chunk_id, []):
                found.append(Candidate(chunk, p.style, p.question, p.answer, teacher=teacher.label))
                if p.follow_up_question and p.follow_up_answer:
                    first = Turn(question=p.question, answer=p.answer)
                    found.append(Candidate(chunk, "follow-up", p.follow_up_question, p.follow_up_answer, (first,),
                                           teacher=teacher.label))
    if len(cfg.all_teachers) > 1:
        order = {c.chunk_id: i for i, c in enumerate(chunks.chunks)}
        found.sort(key=lambda c: (order[c.chunk.chunk_id], -grounding(c.answer, c.chunk.text)))
    return found, _sum_usage(usages)


def question_candidates(chunks: ChunkSet, cfg: SynthesisConfig) -> tuple[list[Candidate], dict[str, int]]:
    """Users' questions answered by the teachers from the passages BM25 finds for each:
    of the answers the teachers say the passages support, the best grounded in them,
    as a pair on the passage that grounds it best."""
    from qaforge.retrieval import Retriever

    assert cfg.questions is not None
    questions = read_questions(cfg.questions)
    retriever = Retriever.build(chunks)
    by_id = {c.chunk_id: c for c in chunks.chunks}
    asks = [(q, [by_id[p.chunk_id] for p in retriever.search(q, cfg.question_passages)]) for q in questions]
    replies, usages = [], []
    for teacher in cfg.all_teachers:
        answers, usage = teacher_answers(asks, teacher, Path(cfg.cache_dir) / "teacher", cfg.answer_style.wording)
        replies.append(answers)
        usages.append(usage)
    found: list[Candidate] = []
    unsupported = 0
    for i, (question, passages) in enumerate(asks):
        supported = [(teacher.label, r.answer) for teacher, answers in zip(cfg.all_teachers, replies)
                     if (r := answers[i]) is not None and r.supported]
        if not supported or not passages:
            unsupported += 1
            continue
        context = " ".join(p.text for p in passages)
        label, answer = max(supported, key=lambda t: grounding(t[1], context))  # the first teacher wins a tie
        chunk = max(passages, key=lambda p: grounding(answer, p.text))
        found.append(Candidate(chunk, USER_QUESTION, question, answer, teacher=label))
    return found, _sum_usage(usages) | {"questions": len(questions), "questions_unsupported": unsupported}


def candidate_pairs(chunks: ChunkSet, cfg: SynthesisConfig) -> tuple[list[Candidate], dict[str, int]]:
    """Candidate pairs from the configured generator, and its usage counts."""
    found: list[Candidate] = []
    stats: dict[str, int] = {}
    if cfg.questions is not None:
        found, stats = question_candidates(chunks, cfg)
    if cfg.generator is Generator.TEACHER:
        pairs, usage = teacher_candidates(chunks, cfg)
        return found + pairs, {k: stats.get(k, 0) + usage.get(k, 0) for k in stats | usage}
    for chunk in chunks.chunks:
        for kind, (question, *rephrasings), answer in pairs_for_chunk(chunk, cfg.max_pairs_per_chunk):
            found.append(Candidate(chunk, kind, question, styled(answer, kind, cfg.answer_style), (),
                                   tuple(rephrasings)))
        for question, answer, first in follow_ups_for_chunk(chunk):
            found.append(
                Candidate(chunk, "follow-up", question, styled(answer, "fact", cfg.answer_style), (first,))
            )
    return found, stats


def generate_pairs(chunks: ChunkSet, cfg: SynthesisConfig) -> tuple[list[QAPair], Counter, dict[str, int]]:
    """Generated pairs that pass the filters, each question followed by its rephrasings
    (numbered by `phrasing`); drops are counted per filter."""
    found, stats = candidate_pairs(chunks, cfg)
    kept_by: Counter[str] = Counter()  # with several teachers: whose pairs the filters kept
    pairs: list[QAPair] = []
    dropped: Counter = Counter({"judge": stats["judge_rejected"]} if stats.get("judge_rejected") else {})
    questions = QuestionIndex(cfg.max_question_similarity)
    for candidate in found:
        chunk, kind = candidate.chunk, candidate.kind
        question, answer = candidate.question.strip(), candidate.answer.strip()
        score = grounding(answer, chunk.text)
        if not question or not answer:
            dropped["empty"] += 1
        # A follow-up may say "it"; a heading that is a question was written by a person.
        elif not candidate.history and kind != "faq" and malformed(question):
            dropped["malformed"] += 1
        elif is_refusal(answer):
            dropped["refusal"] += 1
        elif score < cfg.min_grounding:
            dropped["ungrounded"] += 1
        elif not cfg.min_answer_words <= len(answer.split()) <= cfg.max_answer_words or len(question.split()) > 40:
            dropped["length"] += 1
        # A follow-up is only a repeat if its whole conversation is.
        elif questions.seen(" ".join([*(t.question for t in candidate.history), question])):
            dropped["duplicate_question"] += 1
        else:
            # Rephrasings share the answer; only the first phrasing is checked for repeats.
            phrasings = [question] + [q for q in candidate.rephrasings if not malformed(q)]
            if len(phrasings) <= len(candidate.rephrasings):
                dropped["malformed"] += len(candidate.rephrasings) + 1 - len(phrasings)
            if candidate.teacher and len(cfg.all_teachers) > 1:
                kept_by[f"kept/{candidate.teacher}"] += 1
            pairs += [
                QAPair(
                    history=list(candidate.history),
                    question=q,
                    answer=answer,
                    chunk_id=chunk.chunk_id,
                    doc_id=chunk.doc_id,
                    source=chunk.source,
                    kind=kind,
                    grounding=round(score, 3),
                    phrasing=i,
                )
                for i, q in enumerate(phrasings)
            ]
    return pairs, dropped, stats | dict(kept_by)


Group = tuple[str, str, str]


def _phrasing_group(pair: QAPair) -> Group:
    """What the phrasings of one question share: its chunk, its answer and its earlier turn."""
    return pair.chunk_id, pair.answer, pair.history[-1].question if pair.history else ""


def _sampled(group: Group, seed: int, share: float) -> bool:
    """A stable draw per question: adding or removing others never changes it."""
    digest = hashlib.sha256(f"{seed}:knowledge:{group[0]}:{group[1]}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def hold_out_facts(train: list[QAPair], cfg: SynthesisConfig) -> tuple[list[QAPair], list[QAPair]]:
    """(train, knowledge): a stable share of the training documents' questions leaves
    training with every phrasing, and only where no remaining training question is
    worded as one of its phrasings, no remaining training answer contains one of its
    answer's sentences, and its document keeps questions in training. A model that
    answers them right learned the fact (or read it from the passages), not a sentence
    it was trained to repeat."""
    groups: dict[Group, list[QAPair]] = {}
    for pair in train:
        groups.setdefault(_phrasing_group(pair), []).append(pair)
    held = {g for g, pairs in groups.items() if not pairs[0].history and not pairs[0].unanswerable
            and _sampled(g, cfg.seed, cfg.split.knowledge)}
    while True:  # a question given back to training can make another one's words or answer trained on
        kept = [g for g in groups if g not in held]
        answers, questions = [g[1] for g in kept], {p.question for g in kept for p in groups[g]}
        trained_documents = {groups[g][0].doc_id for g in kept}
        clashes = {g for g in held
                   if groups[g][0].doc_id not in trained_documents
                   or any(p.question in questions for p in groups[g])
                   or any(s in answer for s in sentences(g[1]) if len(s.split()) >= 3 for answer in answers)}
        if not clashes:
            break
        held -= clashes
    return [p for p in train if _phrasing_group(p) not in held], [groups[g][0] for g in groups if g in held]


def hold_out_phrasings(train: list[QAPair], val: list[QAPair], test: list[QAPair]) -> tuple[list[QAPair], ...]:
    """(train, val, test, memorisation): each training question with rephrasings gives
    its last one to the memorisation set, whose answer stays a training target (its
    siblings are trained on): recall of a trained answer in new words; val and test
    keep only first phrasings."""
    last: dict[Group, int] = {}
    for p in train:
        last[_phrasing_group(p)] = max(last.get(_phrasing_group(p), 0), p.phrasing)
    held = [bool(p.phrasing) and p.phrasing == last[_phrasing_group(p)] for p in train]
    return (
        [p for p, h in zip(train, held) if not h],
        [p for p in val if p.phrasing == 0],
        [p for p in test if p.phrasing == 0],
        [p for p, h in zip(train, held) if h],
    )


def synthesize(chunks: ChunkSet, cfg: SynthesisConfig, imported: Sequence[QAPair] = ()) -> QADataset:
    """The generator's pairs and the `imported` ones (sources.qa, taken as they are),
    split by document, with the knowledge and memorisation sets held out of training."""
    pairs, dropped, stats = generate_pairs(chunks, cfg)
    pairs += imported
    train, val, test = split_by_document(pairs, cfg)
    train, knowledge = hold_out_facts(train, cfg)
    train, val, test, memorisation = hold_out_phrasings(train, val, test)
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
        train=train, val=val, test=test, knowledge=knowledge, memorisation=memorisation, dropped=dict(dropped),
        generator=cfg.generator,
        generator_stats=stats,
    )
