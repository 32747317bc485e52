"""Question/answer pairs from a teacher LLM over an OpenAI-compatible chat API.

Requests run concurrently up to a limit, through the shared `ChatClient` (retries
and JSON repairs). Answers are cached by (chunk, prompt, settings), so a
rerun after a crash, or with one new document, asks only for what is new.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, create_model
from tqdm import tqdm

from qaforge.chat_client import ChatClient, EndpointError, Usage
from qaforge.config import TeacherConfig
from qaforge.fsutil import write_atomic
from qaforge.records import Chunk

log = logging.getLogger(__name__)


class TeacherPair(BaseModel):
    question: str = Field(min_length=1)
    answer: str = Field(min_length=1)
    style: str = "factual"
    follow_up_question: str | None = Field(default=None, description="For the multi-turn style.")
    follow_up_answer: str | None = None


class Verdict(BaseModel):
    faithfulness: int = Field(ge=1, le=5)
    relevance: int = Field(ge=1, le=5)


class TeacherReply(BaseModel):
    pairs: list[TeacherPair]


# Characters of a JSON reply per token: English runs about 4; 3 leaves room.
CHARS_PER_TOKEN = 3
PAIR_OVERHEAD = 120  # a pair's keys, quotes, commas and style, in characters
STYLE_CHARS = 32


@functools.cache
def reply_schema(n: int, max_tokens: int) -> type[BaseModel]:
    """The reply a request for `n` pairs asks for: 1 to `n` pairs whose strings fit in
    `max_tokens` together (an answer may take twice a question's room). Under
    constrained decoding that is all a model can write, so even a small one that
    repeats itself ends its reply before `max_tokens` cuts it."""
    unit = max(30, (CHARS_PER_TOKEN * max_tokens // n - PAIR_OVERHEAD) // 6)
    question, answer = Field(min_length=1, max_length=unit), Field(min_length=1, max_length=2 * unit)
    fields: dict[str, Any] = {
        "question": (str, question), "answer": (str, answer),
        "style": (str, Field(default="factual", max_length=STYLE_CHARS)),
        "follow_up_question": (str | None, Field(default=None, max_length=unit)),
        "follow_up_answer": (str | None, Field(default=None, max_length=2 * unit)),
    }
    # additionalProperties false in the schema, so that a decoder adds no keys of its own.
    pair = create_model("TeacherPair", __config__=ConfigDict(json_schema_extra={"additionalProperties": False}),
                        **fields)
    return create_model("TeacherReply", pairs=(list[pair], Field(min_length=1, max_length=n)))  # type: ignore[valid-type]


class TeacherAnswer(BaseModel):
    """A teacher's answer to a user's question from the passages retrieved for it."""

    answer: str = Field(min_length=1, max_length=1200)
    supported: bool = Field(description="Whether the passages hold the answer.")


class JudgedPairs(BaseModel):
    """What is cached per chunk: the pairs, and the judge's verdicts when asked."""

    pairs: list[TeacherPair]
    verdicts: list[Verdict] | None = None

    def kept(self, min_score: int) -> list[TeacherPair]:
        if self.verdicts is None:
            return self.pairs
        return [
            p for p, v in zip(self.pairs, self.verdicts) if min(v.faithfulness, v.relevance) >= min_score
        ]


def styles_for(chunk: Chunk, cfg: TeacherConfig) -> list[str]:
    """The question styles asked for one chunk: the configured mix, seeded by the chunk."""
    rng = random.Random(chunk.doc_content_hash + chunk.chunk_id)
    return rng.choices(list(cfg.styles), weights=list(cfg.styles.values()), k=cfg.pairs_per_chunk)


def request_messages(
    chunk: Chunk, styles: list[str], cfg: TeacherConfig, answer_style: str
) -> list[dict[str, str]]:
    user = cfg.user_prompt.format(
        title=chunk.title,
        headings=" > ".join(chunk.headings),
        chunk=chunk.text,
        n=len(styles),
        styles=", ".join(styles),
        answer_style=answer_style,
    )
    return [{"role": "system", "content": cfg.system_prompt}, {"role": "user", "content": user}]


def _key(payload: dict[str, Any], cfg: TeacherConfig, answer_style: str) -> str:
    """A cached reply's key: what was asked and every setting that changes the reply
    (not how it is fetched, nor the teacher's name)."""
    settings = cfg.model_dump(exclude={"concurrency", "retries", "timeout_seconds", "api_key_env", "name"})
    data = json.dumps(payload | {"settings": settings, "answer_style": answer_style}, sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()[:32]


def cache_key(chunk: Chunk, cfg: TeacherConfig, answer_style: str) -> str:
    return _key({"chunk": chunk.text, "title": chunk.title}, cfg, answer_style)


def passages_text(passages: list[Chunk]) -> str:
    return "\n\n".join(f"[{i}] {p.title} ({' > '.join(p.headings)})\n{p.text}" for i, p in enumerate(passages, 1))


def answer_key(question: str, passages: list[Chunk], cfg: TeacherConfig, answer_style: str) -> str:
    return "answer-" + _key({"question": question, "passages": [p.text for p in passages]}, cfg, answer_style)


class TeacherClient(ChatClient):
    cfg: TeacherConfig

    def __init__(self, cfg: TeacherConfig, usage: Usage, answer_style: str) -> None:
        super().__init__(cfg, usage)
        self.answer_style = answer_style

    async def judged_pairs(self, chunk: Chunk) -> JudgedPairs:
        styles = styles_for(chunk, self.cfg)
        schema = reply_schema(len(styles), self.cfg.max_tokens)
        reply = await self.ask(request_messages(chunk, styles, self.cfg, self.answer_style), schema)
        pairs = TeacherReply.model_validate(reply.model_dump()).pairs
        if not self.cfg.judge_prompt:
            return JudgedPairs(pairs=pairs)
        verdicts = []
        for pair in pairs:
            prompt = self.cfg.judge_prompt.format(chunk=chunk.text, question=pair.question, answer=pair.answer)
            verdicts.append(await self.ask([{"role": "user", "content": prompt}], Verdict))
        return JudgedPairs(pairs=pairs, verdicts=verdicts)

    async def answer(self, question: str, passages: list[Chunk]) -> TeacherAnswer:
        prompt = self.cfg.answer_prompt.format(question=question, passages=passages_text(passages),
                                               answer_style=self.answer_style)
        return await self.ask([{"role": "system", "content": self.cfg.system_prompt},
                               {"role": "user", "content": prompt}], TeacherAnswer)


R = TypeVar("R", bound=BaseModel)
Job = tuple[str, Callable[["TeacherClient"], Awaitable[R]]]  # (cache key, the request)


def _cached_asks(jobs: dict[str, Job[R]], schema: type[R], cfg: TeacherConfig, answer_style: str, cache_dir: Path,
                 usage: Usage, unit: str) -> tuple[dict[str, R], list[str]]:
    """Each job's result by its id, from the cache or asked now (concurrently, each
    saved as it arrives, so a crash loses only what is in flight); and the ids asked. A
    job whose requests all fail is recorded in `usage`, not fatal; an endpoint error
    (401, 404) stops everything."""
    found: dict[str, R] = {}
    todo = []
    for job_id, (key, _) in jobs.items():
        try:
            found[job_id] = schema.model_validate_json((cache_dir / f"{key}.json").read_text())
            usage.cached_chunks += 1
        except (OSError, ValueError):  # not asked yet, or an unreadable file: ask again
            todo.append(job_id)

    async def run() -> None:
        client = TeacherClient(cfg, usage, answer_style)
        semaphore = asyncio.Semaphore(cfg.concurrency)
        progress = tqdm(total=len(todo), desc=f"teacher {cfg.label}", unit=unit)

        async def one(job_id: str) -> None:
            key, ask = jobs[job_id]
            async with semaphore:
                try:
                    result = await ask(client)
                except EndpointError:
                    raise
                except Exception as exc:  # one job's failure never loses the others
                    log.warning("teacher %s: %s %s: %s: %s", cfg.label, unit, job_id, type(exc).__name__, exc)
                    usage.failed_chunks.append(job_id)
                else:
                    found[job_id] = result
                    write_atomic(cache_dir / f"{key}.json", result.model_dump_json())
                finally:
                    progress.update()

        try:
            await asyncio.gather(*(one(job_id) for job_id in todo))
        finally:
            progress.close()
            await client.aclose()

    if todo:
        asyncio.run(run())
    return found, todo


def _nothing_usable(cfg: TeacherConfig, usage: Usage, asked: int, unit: str) -> RuntimeError:
    shown = "; ".join(repr(r) for r in usage.samples) or "none was unparseable"
    return RuntimeError(
        f"the teacher {cfg.label} at {cfg.base_url} gave nothing usable for any of the {asked} {unit}s asked: "
        f"{usage.unparseable} of {usage.requests} replies were not the JSON asked for, {len(usage.failed_chunks)} "
        f"{unit}s failed (the log says why). Replies such as: {shown}"
    )


def teacher_pairs(
    chunks: list[Chunk], cfg: TeacherConfig, cache_dir: Path, answer_style: str = "one or two full sentences"
) -> tuple[dict[str, list[TeacherPair]], Usage]:
    """Pairs per chunk id (those the judge passed, if one is configured). A chunk
    whose requests all fail is recorded, not fatal; a teacher that yields nothing
    usable for any chunk asked stops the run, showing what came back."""
    usage = Usage()
    jobs: dict[str, Job[JudgedPairs]] = {
        c.chunk_id: (cache_key(c, cfg, answer_style), functools.partial(TeacherClient.judged_pairs, chunk=c))
        for c in chunks
    }
    judged, asked = _cached_asks(jobs, JudgedPairs, cfg, answer_style, cache_dir, usage, "chunk")
    if asked and not any(judged.get(c) and judged[c].pairs for c in asked):
        raise _nothing_usable(cfg, usage, len(asked), "chunk")
    results = {chunk_id: j.kept(cfg.judge_min_score) for chunk_id, j in judged.items()}
    usage.judge_rejected = sum(len(j.pairs) for j in judged.values()) - sum(map(len, results.values()))
    log.info(
        "teacher %s: %d requests, %d prompt + %d completion tokens, %d unparseable replies, %d repairs, %d chunks "
        "from cache, %d failed", cfg.label, usage.requests, usage.prompt_tokens, usage.completion_tokens,
        usage.unparseable, usage.repairs, usage.cached_chunks, len(usage.failed_chunks),
    )
    return results, usage


def teacher_answers(asks: list[tuple[str, list[Chunk]]], cfg: TeacherConfig, cache_dir: Path,
                    answer_style: str = "one or two full sentences") -> tuple[list[TeacherAnswer | None], Usage]:
    """The teacher's answer to each user question from its passages, in order (None
    where its requests failed)."""
    usage = Usage()
    jobs: dict[str, Job[TeacherAnswer]] = {
        str(i): (answer_key(question, passages, cfg, answer_style),
                 functools.partial(TeacherClient.answer, question=question, passages=passages))
        for i, (question, passages) in enumerate(asks)
    }
    found, asked = _cached_asks(jobs, TeacherAnswer, cfg, answer_style, cache_dir, usage, "question")
    if asked and not any(job_id in found for job_id in asked):
        raise _nothing_usable(cfg, usage, len(asked), "question")
    return [found.get(str(i)) for i in range(len(asks))], usage
