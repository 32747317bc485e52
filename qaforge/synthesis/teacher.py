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
from pathlib import Path
from typing import Any

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


def cache_key(chunk: Chunk, cfg: TeacherConfig, answer_style: str) -> str:
    settings = cfg.model_dump(exclude={"concurrency", "retries", "timeout_seconds", "api_key_env"})
    payload = json.dumps(
        {"chunk": chunk.text, "title": chunk.title, "settings": settings, "answer_style": answer_style},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


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


def teacher_pairs(
    chunks: list[Chunk], cfg: TeacherConfig, cache_dir: Path, answer_style: str = "one or two full sentences"
) -> tuple[dict[str, list[TeacherPair]], Usage]:
    """Pairs per chunk id (those the judge passed, if one is configured). A chunk
    whose requests all fail is recorded, not fatal."""
    usage = Usage()
    judged: dict[str, JudgedPairs] = {}
    todo: list[Chunk] = []
    for chunk in chunks:
        path = cache_dir / f"{cache_key(chunk, cfg, answer_style)}.json"
        try:
            judged[chunk.chunk_id] = JudgedPairs.model_validate_json(path.read_text())
            usage.cached_chunks += 1
        except (OSError, ValueError):  # not asked yet, or an unreadable file: ask again
            todo.append(chunk)

    async def run() -> None:
        client = TeacherClient(cfg, usage, answer_style)
        semaphore = asyncio.Semaphore(cfg.concurrency)
        progress = tqdm(total=len(todo), desc="teacher", unit="chunk")

        async def one(chunk: Chunk) -> None:
            async with semaphore:
                try:
                    answer = await client.judged_pairs(chunk)
                except EndpointError:
                    raise
                except Exception as exc:  # one chunk's failure never loses the others
                    log.warning("teacher: chunk %s: %s: %s", chunk.chunk_id, type(exc).__name__, exc)
                    usage.failed_chunks.append(chunk.chunk_id)
                else:
                    judged[chunk.chunk_id] = answer
                    # Saved as each answer arrives, so a crash loses only what is in flight.
                    write_atomic(cache_dir / f"{cache_key(chunk, cfg, answer_style)}.json", answer.model_dump_json())
                finally:
                    progress.update()

        try:
            await asyncio.gather(*(one(c) for c in todo))
        finally:
            progress.close()
            await client.aclose()

    if todo:
        asyncio.run(run())
        if not any(judged.get(c.chunk_id) and judged[c.chunk_id].pairs for c in todo):
            shown = "; ".join(repr(r) for r in usage.samples) or "none was unparseable"
            raise RuntimeError(
                f"the teacher at {cfg.base_url} gave no usable pair for any of the {len(todo)} chunks asked: "
                f"{usage.unparseable} of {usage.requests} replies were not the JSON asked for, "
                f"{len(usage.failed_chunks)} chunks failed (the log says why). Replies such as: {shown}"
            )
    results = {chunk_id: j.kept(cfg.judge_min_score) for chunk_id, j in judged.items()}
    usage.judge_rejected = sum(len(j.pairs) for j in judged.values()) - sum(map(len, results.values()))
    log.info(
        "teacher: %d requests, %d prompt + %d completion tokens, %d unparseable replies, %d repairs, %d chunks from "
        "cache, %d failed", usage.requests, usage.prompt_tokens, usage.completion_tokens, usage.unparseable,
        usage.repairs, usage.cached_chunks, len(usage.failed_chunks),
    )
    return results, usage
