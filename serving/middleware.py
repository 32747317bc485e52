"""Plain ASGI middleware (not BaseHTTPMiddleware, which hides client disconnects from
handlers), outermost first: Observe, Authenticate, RequestLimits."""

from __future__ import annotations

import asyncio
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.keys import AuthError, KeyStore
from serving.logs import REQUEST_LOG
from serving.metrics import ServingMetrics
from serving.protocol import APIError

# nginx's "client closed request": logged and counted, never sent.
CLIENT_CLOSED = 499


class Observe:
    """Around every request: a request id (echoed as x-request-id), Prometheus request
    metrics and one JSON log line, written when the response (or stream) has ended,
    with status 499 if the client left before it had the whole response."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        request_id = headers.get("x-request-id") or uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        start, status, complete = time.perf_counter(), 500, False

        async def receive_watched() -> Message:
            nonlocal status
            message = await receive()
            if message["type"] == "http.disconnect" and not complete:
                status = CLIENT_CLOSED
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status, complete
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append("x-request-id", request_id)
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                complete = True
            try:
                await send(message)
            except OSError:
                status = CLIENT_CLOSED
                raise

        try:
            await self.app(scope, receive_watched, send_with_id)
        finally:
            route = scope.get("route")
            seconds = time.perf_counter() - start
            self.metrics.observe(route.path if route is not None else "unmatched", status, seconds)
            REQUEST_LOG.info(
                "request",
                extra={"request_id": request_id, "method": scope["method"], "path": scope["path"],
                       "status": status, "ms": round(1000 * seconds, 1), "key": getattr(state.get("key"), "name", None),
                       **state.get("log", {})},
            )


class Authenticate:
    """The API key, checked before anything reads the body: every path but the open
    ones answers 401 without a valid key, 403 with a revoked one and 400 with two."""

    def __init__(self, app: ASGIApp, keys: KeyStore, metrics: ServingMetrics, open_paths: frozenset[str]) -> None:
        self.app, self.keys, self.metrics, self.open_paths = app, keys, metrics, open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        authorization = Headers(scope=scope).getlist("authorization")
        if len(authorization) > 1:
            # Proxies and frameworks disagree on which of two wins; refuse rather than guess.
            await APIError(400, f"the request has {len(authorization)} Authorization headers; send one",
                           code="duplicate_authorization").response()(scope, receive, send)
            return
        try:
            key = self.keys.authenticate(authorization[0] if authorization else None)
        except AuthError as exc:
            error = APIError(exc.status, exc.message,
                             "authentication_error" if exc.status == 401 else "permission_error",
                             code="invalid_api_key" if exc.status == 401 else "revoked_api_key",
                             headers={"WWW-Authenticate": "Bearer"})
            await error.response()(scope, receive, send)
            return
        scope.setdefault("state", {})["key"] = key
        self.metrics.key_requests.labels(key=key.name).inc()
        await self.app(scope, receive, send)


class RequestLimits:
    """431 for headers over `max_header_bytes`; 413 for a body over `max_body_bytes`: at
    once when its Content-Length says so, else as soon as the bytes received pass it (a
    chunked upload declares no length); 408 when the whole body has not arrived within
    `body_timeout` seconds."""

    def __init__(self, app: ASGIApp, max_header_bytes: int, max_body_bytes: int, body_timeout: float) -> None:
        self.app, self.max_header_bytes = app, max_header_bytes
        self.max_body_bytes, self.body_timeout = max_body_bytes, body_timeout

    def too_large(self, size: str) -> APIError:
        return APIError(413, f"request body of {size} bytes is over the limit of {self.max_body_bytes}",
                        code="body_too_large")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header_bytes = sum(len(name) + len(value) + 4 for name, value in scope["headers"])
        if header_bytes > self.max_header_bytes:
            error = APIError(431, f"request headers of {header_bytes} bytes are over the limit of "
                             f"{self.max_header_bytes}", code="headers_too_large")
            await error.response()(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await self.too_large(declared).response()(scope, receive, send)
            return
        received, deadline, done = 0, time.monotonic() + self.body_timeout, False

        async def counted() -> Message:
            nonlocal received, done
            if done:  # the body is in: what comes now is the disconnect, whenever it comes
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise APIError(408, f"the request body did not arrive within {self.body_timeout:g} seconds",
                               code="request_timeout") from None
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise self.too_large(f"at least {received}")
            done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, counted, send)
