"""A client for OpenAI-compatible chat endpoints that must reply in JSON: the
teacher that writes QA pairs and the judge that grades answers both use it.

Each request asks for JSON of the reply's schema (`response_format` json_schema, as
OpenAI, vLLM, llama.cpp's server and `qaforge serve` take it); an endpoint that
refuses that gets `json_object`, then no `response_format`, and the client remembers
what it took. 429, 5xx and timeouts are retried with exponential backoff; a reply
that is not the JSON asked for is sent back with the validation errors for a repair.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from qaforge.config import EndpointConfig, ResponseFormat

T = TypeVar("T", bound=BaseModel)
log = logging.getLogger(__name__)
SAMPLES = 3  # unparseable replies kept to show


@dataclass
class Usage:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    repairs: int = 0
    unparseable: int = 0  # replies that were not the JSON asked for, repaired or not
    samples: list[str] = field(default_factory=list)  # the first few of them, to show what came back
    # Teacher only: how its chunks went.
    cached_chunks: int = 0
    judge_rejected: int = 0
    failed_chunks: list[str] = field(default_factory=list)


class EndpointError(RuntimeError):
    """The endpoint answered in a way retrying cannot fix (e.g. 401, 404)."""


class _FormatRefused(RuntimeError):
    """A 400 about `response_format`: the endpoint does not take that shape."""


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code == 429 or exc.response.status_code >= 500
    return isinstance(exc, (httpx.TimeoutException, httpx.TransportError))


def parse_reply(content: str, schema: type[T]) -> T:
    """The JSON object in a reply, tolerating a Markdown code fence around it."""
    text = re.sub(r"^```(?:json)?\s*|\s*```$", "", content.strip())
    return schema.model_validate_json(text)


def format_fields(fmt: ResponseFormat, schema: type[BaseModel]) -> dict[str, Any]:
    """The request's `response_format` field, if any."""
    if fmt is ResponseFormat.JSON_SCHEMA:
        return {"response_format": {"type": "json_schema", "json_schema": {
            "name": schema.__name__, "schema": schema.model_json_schema()}}}
    return {"response_format": {"type": "json_object"}} if fmt is ResponseFormat.JSON_OBJECT else {}


class ChatClient:
    def __init__(self, cfg: EndpointConfig, usage: Usage) -> None:
        self.cfg = cfg
        self.usage = usage
        self.response_format = cfg.response_format  # until the endpoint refuses it
        key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else ""
        self.http = httpx.AsyncClient(
            base_url=cfg.base_url.rstrip("/") + "/",
            timeout=cfg.timeout_seconds,
            headers={"Authorization": f"Bearer {key}"} if key else {},
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def complete(self, messages: list[dict[str, str]], schema: type[BaseModel]) -> str:
        """The reply's text, asked for as JSON of `schema` in the strictest way the
        endpoint takes: a 400 that names `response_format` steps down to the next."""
        while True:
            asked = self.response_format
            try:
                return await self._post(messages, format_fields(asked, schema))
            except _FormatRefused:  # never raised for NONE, which sends no response_format
                # Requests in flight may have stepped down already: never step back up.
                order = list(ResponseFormat)
                self.response_format = order[max(order.index(asked) + 1, order.index(self.response_format))]
                log.warning("%s refused response_format %s; asking with %s", self.cfg.base_url, asked.value,
                            self.response_format.value)

    async def _post(self, messages: list[dict[str, str]], shape: dict[str, Any]) -> str:
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
                        **shape,
                    },
                )
                if response.status_code == 429 or response.status_code >= 500:
                    response.raise_for_status()
                if response.status_code == 400 and shape and "response_format" in response.text:
                    raise _FormatRefused(f"{self.cfg.base_url}: HTTP 400: {response.text[:300]}")
                if response.status_code >= 400:
                    raise EndpointError(
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
            content = await self.complete(messages, schema)
            try:
                return parse_reply(content, schema)
            except ValidationError as exc:
                self.usage.unparseable += 1
                if len(self.usage.samples) < SAMPLES:
                    self.usage.samples.append(content[:300])
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
