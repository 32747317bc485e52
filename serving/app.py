"""The API app: routes (serving/routes.py) over a ChatHandler and the continuous
batching engine, behind the middleware that observes, authenticates and bounds every
request; the served model is swapped when the registry alias moves.

Run it with `qaforge serve` or `uvicorn --factory serving.app:create_app` (settings
from QAFORGE_* environment variables, see `ServeSettings`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from serving.engine import Engine
from serving.handler import ChatHandler, ClientGone
from serving.keys import KeyStore
from serving.metrics import ServingMetrics
from serving.middleware import CLIENT_CLOSED, Authenticate, Observe, RequestLimits
from serving.models import ModelHolder, load_model
from serving.protocol import APIError, limited_chat_request
from serving.routes import api_router
from serving.settings import ServeSettings

log = logging.getLogger(__name__)
OPEN_PATHS = frozenset({"/health", "/chat"})


def create_app(settings: ServeSettings | None = None) -> FastAPI:
    settings = settings or ServeSettings()
    keys = KeyStore(settings.keys_file, settings.tokens_env)
    metrics = ServingMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.tracking_uri:
            import mlflow

            mlflow.set_tracking_uri(settings.tracking_uri)
        holder = ModelHolder(await run_in_threadpool(load_model, settings.model_uri, settings), settings,
                             on_swap=lambda m: metrics.serving(m.name, m.version))
        metrics.serving(holder.current.name, holder.current.version)
        engine = Engine(settings.batch_window_ms / 1000, settings.max_batch_size,
                        on_batch=metrics.batch_size.observe, on_cancel=metrics.cancelled.inc)
        app.state.handler = ChatHandler(settings, holder, engine, metrics)
        watcher = asyncio.create_task(holder.watch(settings.reload_seconds)) if settings.reload_seconds else None
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):  # only the main thread may
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, keys.reload)
        log.info("serving %s v%s", holder.current.uri, holder.current.version)
        yield
        if watcher:
            watcher.cancel()
        await run_in_threadpool(engine.close)

    app = FastAPI(title="qaforge", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json" if settings.openapi else None)
    app.openapi = published_schema(app)  # type: ignore[method-assign]
    app.include_router(api_router(limited_chat_request(settings)))
    # Added innermost first: Observe sees every answer; the key is checked first, then the
    # limits, before anything reads the body (they wrap `receive`, so they hold while it is read).
    app.add_middleware(RequestLimits, max_header_bytes=settings.max_header_bytes,
                       max_body_bytes=settings.max_body_bytes, body_timeout=settings.body_timeout_seconds)
    app.add_middleware(Authenticate, keys=keys, metrics=metrics, open_paths=OPEN_PATHS)
    app.add_middleware(Observe, metrics=metrics)

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, exc: ClientGone) -> Response:
        return Response(status_code=CLIENT_CLOSED)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(HTTPException)  # 404, 405, an unreadable body
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return APIError(exc.status_code, str(exc.detail), code=code, headers=exc.headers).response()

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"][1:] if p != "body") or None
        if first["type"] == "json_invalid":
            message, param = f"the body is not valid JSON: {first['ctx']['error']} at position {first['loc'][-1]}", None
        else:
            message = f"{param or 'body'}: {first['msg']}"
        return APIError(400, message, param=param, code=first["type"]).response()

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("request %s failed", request.state.request_id, exc_info=exc)
        return APIError(500, "internal error; the server log has the details", "server_error").response()

    return app


def published_schema(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """app.openapi, describing what the server really does: invalid bodies get 400 in
    OpenAI's shape (not FastAPI's 422), and every path but /health needs a bearer key."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        for path, operations in schema["paths"].items():
            for operation in operations.values():
                operation["responses"].pop("422", None)
                if path in OPEN_PATHS:
                    operation["security"] = []
        components = schema.setdefault("components", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            components.get("schemas", {}).pop(unused, None)
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        schema["security"] = [{"bearer": []}]
        return schema

    return openapi
