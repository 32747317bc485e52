"""The routes: OpenAI-compatible chat completions (streaming too), the models list,
ratings of answers (/v1/feedback), the seeds' /predict, Prometheus /metrics, and open /health and /chat (a chat page). Each is a thin call into
the ChatHandler on `app.state`; the API key was checked by the Authenticate middleware."""

# No `from __future__ import annotations`: FastAPI must see the local `chat_request`
# class itself in the route's signature, not its name.
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serving.handler import ChatHandler
from serving.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    FeedbackRequest,
    FeedbackResponse,
    Health,
    ModelList,
    PredictRequest,
    PredictResponse,
    error_responses,
)

CHAT_PAGE = Path(__file__).resolve().parent / "static" / "chat.html"
# Everything the page needs is in it or on this server: a browser refuses anything else.
CHAT_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
            "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
AUTHENTICATED = error_responses(401, 403, 431)
WITH_BODY = error_responses(400, 401, 403, 408, 413, 429, 431)
# One server-sent event (OpenAPI before 3.2 describes an event stream event by event).
EVENT_STREAM = {"text/event-stream": {"schema": {
    "type": "object", "required": ["data"],
    "properties": {"data": {"type": "string", "description": "A chat.completion.chunk, or an error, as JSON; "
                                                            "the last event is [DONE]."}},
}}}


def handler(request: Request) -> ChatHandler:
    return request.app.state.handler


def api_router(chat_request: type[ChatCompletionRequest]) -> APIRouter:
    """The routes, with chat requests validated by `chat_request` (the server's limits)."""
    router = APIRouter()

    @router.get("/health")
    async def health(request: Request) -> Health:
        current = handler(request).model
        return Health(status="ok", model=current.uri, version=current.version)

    @router.get("/chat", response_class=HTMLResponse, responses={
        200: {"content": {"text/html": {"schema": {"type": "string"}}}, "description": "The chat page."}
    })
    async def chat_page() -> HTMLResponse:
        # Open like /health: the page holds nothing; what it asks the API needs a key.
        return HTMLResponse(CHAT_PAGE.read_text(encoding="utf-8"), headers={"Content-Security-Policy": CHAT_CSP})

    @router.get("/v1/models", responses=AUTHENTICATED)
    async def models(request: Request) -> ModelList:
        return handler(request).models()

    @router.get("/metrics", response_class=Response, responses=AUTHENTICATED | {
        200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}, "description": "Prometheus metrics."}
    })
    async def prometheus(request: Request) -> Response:
        return Response(generate_latest(handler(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @router.post("/v1/feedback", responses=WITH_BODY | error_responses(404))
    async def feedback(body: FeedbackRequest, request: Request) -> FeedbackResponse:
        return handler(request).feedback(request, request.state.key, body)

    @router.post("/predict", responses=WITH_BODY)
    async def predict(body: PredictRequest, request: Request) -> PredictResponse:
        return await handler(request).predict(request, request.state.key, body.input_text)

    @router.post("/v1/chat/completions", response_model=ChatCompletion, responses=WITH_BODY | error_responses(404) | {
        200: {"content": EVENT_STREAM, "description": "The completion, or with `stream: true` server-sent events."}
    })
    async def chat_completions(body: chat_request, request: Request) -> Any:  # type: ignore[valid-type]
        answer = await handler(request).chat(request, request.state.key, body)
        if isinstance(answer, ChatCompletion):
            return answer
        return StreamingResponse(answer, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return router
