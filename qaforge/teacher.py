"""Question/answer pairs from a teacher LLM over an OpenAI-compatible chat API.

Requests run concurrently up to a limit; 429, 5xx and timeouts are retried with
exponential backoff; a reply that is not the JSON asked for is sent back with the
validation error for a repair. Answers are cached by (chunk, prompt, settings), so a
rerun after a crash, or with one new document, asks only for what is new.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from typing import TypeVar

from pydantic import BaseModel, Field, ValidationError
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential
from tqdm import tqdm

from qaforge.config import TeacherConfig
from qaforge.fsutil import write_atomic
from qaforge.records import Chunk

log = logging.getLogger(__name__)
T = TypeVar("T", bound=BaseModel)


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


@dataclass
class Usage:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    repairs: int = 0
    cached_chunks: int = 0
    judge_rejected: int = 0
    failed_chunks: list[str] = field(default_factory=list)


class TeacherError(RuntimeError):
    """The endpoint answered in a way retrying cannot fix (e.g. 401, 404)."""


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code == 429 or exc.response.status_code >= 500
    return isinstance(exc, (httpx.TimeoutException, httpx.TransportError))


def parse_reply(content: str, schema: type[T]) -> T:
    """The JSON object in a reply, tolerating a Markdown code fence around it."""
    text = re.sub(r"^```(?:json)?\s*|\s*```$", "", content.strip())
    return schema.model_validate_json(text)


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


class TeacherClient:
    def __init__(self, cfg: TeacherConfig, usage: Usage, answer_style: str) -> None:
        self.cfg = cfg
        self.usage = usage
        self.answer_style = answer_style
        key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else ""
        self.http = httpx.AsyncClient(
            base_url=cfg.base_url.rstrip("/") + "/",
            timeout=cfg.timeout_seconds,
            headers={"Authorization": f"Bearer {key}"} if key else {},
        )

    async def complete(self, messages: list[dict[str, str]]) -> str:
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(self.cfg.retries + 1),
            wait=wait_exponential(multiplier=0.5, max=30),
            retry=retry_if_exception(_retryable),
            reraise=True,
        ):
            with attempt:
                self.usage.requests += 1
                response = await self.http.post(
                    "chat/completions",
                    json={
                        "model": self.cfg.model,
                        "messages": messages,
                        "temperature": self.cfg.temperature,
                        "max_tokens": self.cfg.max_tokens,
                        "response_format": {"type": "json_object"},
                    },
                )
                if response.status_code == 429 or response.status_code >= 500:
                    response.raise_for_status()
                if response.status_code >= 400:
                    raise TeacherError(
                        f"{self.cfg.base_url}: HTTP {response.status_code}: {response.text[:300]}"
                    )
                body = response.json()
        usage = body.get("usage") or {}
        self.usage.prompt_tokens += usage.get("prompt_tokens", 0)
        self.usage.completion_tokens += usage.get("completion_tokens", 0)
        return body["choices"][0]["message"]["content"]

    async def ask(self, messages: list[dict[str, str]], schema: type[T]) -> T:
        """A reply validated against `schema`, re-asking with the errors when it is not."""
        repairs_left = self.cfg.repairs
        while True:
            content = await self.complete(messages)
            try:
                return parse_reply(content, schema)
            except ValidationError as exc:
                if not repairs_left:
                    raise
                repairs_left -= 1
                self.usage.repairs += 1
                problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
                messages = [
                    *messages,
                    {"role": "assistant", "content": content},
                    {
                        "role": "user",
                        "content": f"That reply is not valid JSON matching the schema "
                        f"{json.dumps(schema.model_json_schema())} ({problems}). "
                        "Reply with that JSON object only.",
                    },
                ]

    async def judged_pairs(self, chunk: Chunk) -> JudgedPairs:
        messages = request_messages(chunk, styles_for(chunk, self.cfg), self.cfg, self.answer_style)
        pairs = (await self.ask(messages, TeacherReply)).pairs
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
                except TeacherError:
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
            await client.http.aclose()

    if todo:
        asyncio.run(run())
    results = {chunk_id: j.kept(cfg.judge_min_score) for chunk_id, j in judged.items()}
    usage.judge_rejected = sum(len(j.pairs) for j in judged.values()) - sum(map(len, results.values()))
    log.info(
        "teacher: %d requests, %d prompt + %d completion tokens, %d repairs, %d chunks from cache, %d failed",
        usage.requests, usage.prompt_tokens, usage.completion_tokens, usage.repairs,
        usage.cached_chunks, len(usage.failed_chunks),
    )
    return results, usage
