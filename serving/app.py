"""The API: OpenAI-compatible chat completions (streaming too), the models list, the
seeds' /predict, Prometheus /metrics and an open /health, in front of a dynamically
batched model that is swapped when the registry alias moves.

Run it with `qaforge serve` or `uvicorn --factory serving.app:create_app` (settings
from QAFORGE_* environment variables, see `ServeSettings`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from datetime import datetime, UTC
from typing import Any, Literal, TypeVar

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qaforge.fsutil import append_line
from qaforge.prompting import render_prompt, with_system_prompt
from qaforge.records import ConversationRecord
from serving.batching import Batcher, Completion, Sampling
from serving.keys import ApiKey, AuthError, KeyStore
from serving.limits import RateLimited, RateLimiter
from serving.logs import REQUEST_LOG
from serving.metrics import ServingMetrics
from serving.models import LoadedModel, ModelHolder, load_model
from serving.settings import ServeSettings

log = logging.getLogger(__name__)
T = TypeVar("T")


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatCompletionRequest(BaseModel):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: Literal[1] = 1
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    user: str | None = None


class PredictRequest(BaseModel):
    input_text: str = Field(min_length=1)


class APIError(HTTPException):
    """An error answered in OpenAI's shape. An HTTPException, so FastAPI passes it on
    when it is raised while the request body is read."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(status, message, headers or {})
        self.status, self.message, self.kind, self.code, self.param = status, message, kind, code, param

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        return JSONResponse(status_code=self.status, content=body, headers=self.headers)


class BodyLimit:
    """413 for a body over `max_bytes`: at once when its Content-Length says so, else
    as soon as the bytes received pass it (a chunked upload declares no length)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def too_large(self, size: str) -> APIError:
        return APIError(413, f"request body of {size} bytes is over the limit of {self.max_bytes}",
                        code="body_too_large")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self.too_large(declared.decode()).response()(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise self.too_large(f"at least {received}")
            return message

        await self.app(scope, counted, send)


class Observe:
    """Around every request: a request id (echoed as x-request-id), Prometheus request
    metrics and one JSON log line, written when the response (or stream) has ended.
    Plain ASGI, not BaseHTTPMiddleware, which hides client disconnects from handlers."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        request.state.request_id = request_id
        start, status = time.perf_counter(), 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append("x-request-id", request_id)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            seconds = time.perf_counter() - start
            self.metrics.observe(route.path if route is not None else "unmatched", status, seconds)
            REQUEST_LOG.info(
                "request",
                extra={"request_id": request_id, "method": request.method, "path": request.url.path,
                       "status": status, "ms": round(1000 * seconds, 1),
                       "key": getattr(request.state, "key", None), **getattr(request.state, "log", {})},
            )


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


def create_app(settings: ServeSettings | None = None) -> FastAPI:
    settings = settings or ServeSettings()
    keys = KeyStore(settings.keys_file, settings.tokens_env)
    limiter = RateLimiter()
    metrics = ServingMetrics()
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.tracking_uri:
            import mlflow

            mlflow.set_tracking_uri(settings.tracking_uri)
        holder = ModelHolder(await run_in_threadpool(load_model, settings.model_uri, settings), settings,
                             on_swap=lambda m: metrics.serving(m.name, m.version))
        metrics.serving(holder.current.name, holder.current.version)
        state["holder"] = holder
        state["batcher"] = Batcher(holder, settings.batch_window_ms / 1000, settings.max_batch_size,
                                   on_batch=metrics.batch_size.observe, on_cancel=metrics.cancelled.inc)
        watcher = asyncio.create_task(holder.watch(settings.reload_seconds)) if settings.reload_seconds else None
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):  # only the main thread may
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, keys.reload)
        log.info("serving %s v%s", holder.current.uri, holder.current.version)
        yield
        if watcher:
            watcher.cancel()
        await run_in_threadpool(state["batcher"].close)

    app = FastAPI(title="qaforge", lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(Observe, metrics=metrics)  # added last, so outermost: it sees BodyLimit's 413s

    def model() -> LoadedModel:
        return state["holder"].current

    async def authenticate(request: Request) -> ApiKey:
        try:
            key = keys.authenticate(request.headers.get("authorization"))
        except AuthError as exc:
            raise APIError(exc.status, exc.message, "authentication_error" if exc.status == 401 else "permission_error",
                           code="invalid_api_key" if exc.status == 401 else "revoked_api_key",
                           headers={"WWW-Authenticate": "Bearer"}) from None
        request.state.key = key.name
        metrics.key_requests.labels(key=key.name).inc()
        return key

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, exc: ClientGone) -> Response:
        return Response(status_code=499)  # nginx's "client closed request", for the logs and metrics

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return APIError(exc.status_code, str(exc.detail), headers=exc.headers).response()

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"] if p != "body")
        return APIError(422, f"{param or 'body'}: {first['msg']}", param=param or None).response()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        current = model()
        return {"status": "ok", "model": current.uri, "version": current.version}

    @app.get("/v1/models")
    async def models(key: ApiKey = Depends(authenticate)) -> dict[str, Any]:
        current = model()
        return {"object": "list", "data": [
            {"id": current.name, "object": "model", "created": 0, "owned_by": "qaforge", "version": current.version}
        ]}

    @app.get("/metrics")
    async def prometheus(key: ApiKey = Depends(authenticate)) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def admit(request: Request, key: ApiKey, messages: list[dict[str, str]], max_tokens: int) -> int:
        """Check the limits before any generation; returns the prompt's token count."""
        if len(messages) > settings.max_messages:
            raise APIError(400, f"{len(messages)} messages is over the limit of {settings.max_messages}",
                           param="messages", code="too_many_messages")
        if max_tokens > settings.max_tokens_limit:
            raise APIError(400, f"max_tokens {max_tokens} is over the limit of {settings.max_tokens_limit}",
                           param="max_tokens", code="max_tokens_too_large")
        current = model()
        prompt = render_prompt(current.tokenizer, with_system_prompt(messages, current.system_prompt))
        prompt_tokens = len(current.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        if prompt_tokens > settings.max_prompt_tokens:
            raise APIError(400, f"the prompt has {prompt_tokens} tokens, over the limit of "
                           f"{settings.max_prompt_tokens}", param="messages", code="context_length_exceeded")
        try:
            limiter.acquire(key.name, key.requests_per_minute or settings.requests_per_minute,
                            key.tokens_per_minute or settings.tokens_per_minute, prompt_tokens + max_tokens)
        except RateLimited as exc:
            raise APIError(429, exc.message, "rate_limit_error", code="rate_limit_exceeded",
                           headers={"Retry-After": str(exc.retry_after)}) from None
        return prompt_tokens

    def settle(request: Request, key: ApiKey, messages: list[dict[str, str]], max_tokens: int,
               result: Completion) -> None:
        """Refund unused tokens, count usage, and log the exchange where that is enabled."""
        limiter.refund(key.name, max_tokens - result.completion_tokens)
        metrics.prompt_tokens.labels(key=key.name).inc(result.prompt_tokens)
        metrics.completion_tokens.labels(key=key.name).inc(result.completion_tokens)
        request.state.log = {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                             "model_version": result.version}
        if settings.log_prompts:
            request.state.log |= {"messages": messages, "answer": result.text}
        if settings.conversation_log:
            record = ConversationRecord(
                time=datetime.now(UTC), request_id=request.state.request_id, key=key.name,
                model=model().name, version=result.version, messages=messages, answer=result.text,
            )
            append_line(settings.conversation_log, record.model_dump_json())

    @app.post("/predict")
    async def predict(body: PredictRequest, request: Request, key: ApiKey = Depends(authenticate)) -> dict[str, Any]:
        messages = [{"role": "user", "content": body.input_text}]
        admit(request, key, messages, settings.max_new_tokens)
        result = await unless_disconnected(request, state["batcher"].complete(messages, Sampling(settings.max_new_tokens)))
        settle(request, key, messages, settings.max_new_tokens, result)
        return {"output_text": result.text, "model_version": result.version}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request,
                               key: ApiKey = Depends(authenticate)) -> Any:
        current = model()
        if body.model not in (None, current.name, current.uri):
            raise APIError(404, f"model '{body.model}' does not exist; this server serves '{current.name}'",
                           param="model", code="model_not_found")
        messages = [m.model_dump() for m in body.messages]
        max_tokens = body.max_completion_tokens or body.max_tokens or settings.max_new_tokens
        admit(request, key, messages, max_tokens)
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        sampling = Sampling(max_tokens, body.temperature, body.top_p, stop, body.seed)
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": completion_id, "created": created, "model": current.name,
                "system_fingerprint": f"v{current.version}" if current.version else None}
        if not body.stream:
            result = await unless_disconnected(request, state["batcher"].complete(messages, sampling))
            settle(request, key, messages, max_tokens, result)
            return head | {
                "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                             "finish_reason": result.finish_reason}],
                "usage": usage(result),
            }
        include_usage = bool((body.stream_options or {}).get("include_usage"))

        async def events() -> AsyncIterator[str]:
            def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
                payload = head | {"object": "chat.completion.chunk",
                                  "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
                return f"data: {json.dumps(payload)}\n\n"

            yield chunk({"role": "assistant", "content": ""})
            try:
                # aclosing: a client that disconnects closes the stream now, which stops generation.
                async with contextlib.aclosing(state["batcher"].stream(messages, sampling)) as items:
                    async for item in items:
                        if not isinstance(item, Completion):
                            yield chunk({"content": item})
                            continue
                        settle(request, key, messages, max_tokens, item)
                        yield chunk({}, item.finish_reason)
                        if include_usage:
                            payload = head | {"object": "chat.completion.chunk", "choices": [], "usage": usage(item)}
                            yield f"data: {json.dumps(payload)}\n\n"
            except Exception as exc:  # headers are sent: report the failure in the stream
                log.exception("stream %s failed", completion_id)
                yield f"data: {json.dumps({'error': {'message': str(exc), 'type': 'server_error'}})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


def usage(result: Completion) -> dict[str, int]:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}
