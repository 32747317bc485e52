"""The work behind the routes: passages retrieved (for a model that answers from them),
limits checked and the prompt tokenized before a request reaches the engine, usage
counted and logged after."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime
from typing import Any, TypeVar

from starlette.requests import Request

from qaforge.fsutil import append_line
from qaforge.generation import Completion, Sampling
from qaforge.privacy import scrub_messages
from qaforge.prompting import unweighted_history
from qaforge.records import ConversationRecord, FeedbackRecord
from qaforge.served import LoadedModel
from qaforge.structured import json_grammar
from serving.engine import Engine
from serving.keys import ApiKey
from serving.limits import RateLimited, RateLimiter
from serving.metrics import ServingMetrics
from serving.models import ModelHolder
from serving.protocol import (
    APIError,
    AssistantMessage,
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    FeedbackRequest,
    FeedbackResponse,
    ModelCard,
    ModelList,
    PredictResponse,
    ResponseFormat,
    Source,
    Usage,
)
from serving.settings import ServeSettings

log = logging.getLogger(__name__)
T = TypeVar("T")


class ClientGone(Exception):
    """The client of a non-streaming request disconnected before its answer."""


async def unless_disconnected(request: Request, work: Awaitable[T], poll_seconds: float = 0.5) -> T:
    """`work`'s result, or ClientGone once the client has gone, with `work` cancelled:
    a plain request sends nothing until it is answered, so only polling tells."""
    task = asyncio.ensure_future(work)
    while not (await asyncio.wait({task}, timeout=poll_seconds))[0]:
        if await request.is_disconnected():
            task.cancel()
            raise ClientGone
    return task.result()


def grammar(response_format: ResponseFormat | None) -> str | None:
    """The grammar a `response_format` holds the answer to; a schema that cannot be
    compiled is the client's error, named."""
    if response_format is None or not response_format.constrained():
        return None
    try:
        return json_grammar(response_format.answer_schema())
    except ValueError as exc:
        raise APIError(400, str(exc), param="response_format", code="invalid_json_schema") from None


def usage(result: Completion) -> Usage:
    return Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                 total_tokens=result.prompt_tokens + result.completion_tokens)


class ChatHandler:
    def __init__(self, settings: ServeSettings, holder: ModelHolder, engine: Engine, metrics: ServingMetrics) -> None:
        self.settings, self.holder, self.engine, self.metrics = settings, holder, engine, metrics
        self.limiter = RateLimiter()

    @property
    def model(self) -> LoadedModel:
        return self.holder.current

    def models(self) -> ModelList:
        current = self.model
        return ModelList(data=[ModelCard(id=current.name, version=current.version)])

    def admit(self, current: LoadedModel, key: ApiKey, messages: list[dict[str, str]], max_tokens: int
              ) -> tuple[list[int], list[Source] | None]:
        """The prompt's token ids, with the passages retrieved for it put into its newest
        question when the model answers from passages, once it is within the limits and
        the key's rate; and those passages as sources (None for a closed-book model)."""
        prompt_ids, passages = current.prompt(messages)
        if len(prompt_ids) > self.settings.max_prompt_tokens:
            raise APIError(400, f"the prompt has {len(prompt_ids)} tokens, over the limit of "
                           f"{self.settings.max_prompt_tokens}", param="messages", code="context_length_exceeded")
        try:
            self.limiter.acquire(key.name, key.requests_per_minute or self.settings.requests_per_minute,
                                 key.tokens_per_minute or self.settings.tokens_per_minute, len(prompt_ids) + max_tokens)
        except RateLimited as exc:
            raise APIError(429, exc.message, "rate_limit_error", code="rate_limit_exceeded",
                           headers={"Retry-After": str(exc.retry_after)}) from None
        if passages is None:
            return prompt_ids, None
        return prompt_ids, [Source(title=p.title, source=p.source, chunk_id=p.chunk_id, score=p.score) for p in passages]

    def settle(self, request: Request, key: ApiKey, messages: list[dict[str, str]], max_tokens: int,
               result: Completion) -> None:
        """Refund unused tokens, count usage, and log the exchange where that is enabled."""
        self.limiter.refund(key.name, max_tokens - result.completion_tokens)
        self.metrics.prompt_tokens.labels(key=key.name).inc(result.prompt_tokens)
        self.metrics.completion_tokens.labels(key=key.name).inc(result.completion_tokens)
        request.state.log = {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                             "model_version": result.version}
        if self.settings.log_prompts:
            request.state.log |= {"messages": messages, "answer": result.text}
        if self.settings.conversation_log:
            conversation = [*unweighted_history(messages), {"role": "assistant", "content": result.text}]
            if self.settings.scrub_personal_data:  # before anything is written
                conversation = scrub_messages(conversation)
            record = ConversationRecord(
                time=datetime.now(UTC), request_id=request.state.request_id, key=key.name,
                model=self.model.name, version=result.version, messages=conversation,
                answer=conversation[-1]["content"],
            )
            append_line(self.settings.conversation_log, record.model_dump_json())

    def feedback(self, request: Request, key: ApiKey, body: FeedbackRequest) -> FeedbackResponse:
        """Record a rating of an answer, by the request id its response carried."""
        if self.settings.feedback_log is None:
            raise APIError(404, "this server records no feedback: set serving.feedback_log", code="feedback_disabled")
        record = FeedbackRecord(time=datetime.now(UTC), request_id=body.request_id, key=key.name, rating=body.rating)
        append_line(self.settings.feedback_log, record.model_dump_json())
        request.state.log = {"rated": body.request_id, "rating": body.rating.value}
        return FeedbackResponse(request_id=body.request_id, rating=body.rating)

    async def predict(self, request: Request, key: ApiKey, text: str) -> PredictResponse:
        current = self.model
        messages = [{"role": "user", "content": text}]
        max_tokens = self.settings.max_new_tokens
        prompt_ids, sources = self.admit(current, key, messages, max_tokens)
        result = await unless_disconnected(request, self.engine.complete(current, prompt_ids, Sampling(max_tokens)))
        self.settle(request, key, messages, max_tokens, result)
        return PredictResponse(output_text=result.text, model_version=result.version, sources=sources)

    async def chat(self, request: Request, key: ApiKey, body: ChatCompletionRequest) -> ChatCompletion | AsyncIterator[str]:
        """The completion, or for a streaming request the server-sent events."""
        current = self.model
        if body.model not in (None, current.name, current.uri):
            raise APIError(404, f"model '{body.model}' does not exist; this server serves '{current.name}'",
                           param="model", code="model_not_found")
        messages = [m.model_dump() for m in body.messages]
        max_tokens = body.max_completion_tokens or body.max_tokens or self.settings.max_new_tokens
        constraint = grammar(body.response_format)  # a bad schema is refused before the rate is charged
        prompt_ids, sources = self.admit(current, key, messages, max_tokens)
        sampling = Sampling(max_tokens, body.temperature, body.top_p, body.stop_sequences(), body.seed, constraint)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": current.name,
                "system_fingerprint": f"v{current.version}" if current.version else None}
        if not body.stream:
            result = await unless_disconnected(request, self.engine.complete(current, prompt_ids, sampling))
            self.settle(request, key, messages, max_tokens, result)
            return ChatCompletion(**head, usage=usage(result), sources=sources, choices=[
                Choice(message=AssistantMessage(content=result.text), finish_reason=result.finish_reason)
            ])
        include_usage = body.stream_options is not None and body.stream_options.include_usage

        def event(payload: dict[str, Any]) -> str:
            return f"data: {json.dumps(head | {'object': 'chat.completion.chunk'} | payload)}\n\n"

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            return event({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

        async def events() -> AsyncIterator[str]:
            # The sources come first, so a client can show them while the answer streams.
            first = {"role": "assistant", "content": ""}
            yield event({"choices": [{"index": 0, "delta": first, "finish_reason": None}]}
                        | ({"sources": [s.model_dump() for s in sources]} if sources is not None else {}))
            try:
                # aclosing: a client that disconnects closes the stream now, which stops generation.
                async with contextlib.aclosing(self.engine.stream(current, prompt_ids, sampling)) as items:
                    async for item in items:
                        if not isinstance(item, Completion):
                            yield chunk({"content": item})
                            continue
                        self.settle(request, key, messages, max_tokens, item)
                        yield chunk({}, item.finish_reason)
                        if include_usage:
                            yield event({"choices": [], "usage": usage(item).model_dump()})
            except Exception:  # headers are sent: report the failure in the stream, without internals
                log.exception("stream %s failed", head["id"])
                error = {"message": "generation failed; the server log has the details", "type": "server_error"}
                yield f"data: {json.dumps({'error': error})}\n\n"
            yield "data: [DONE]\n\n"

        return events()
