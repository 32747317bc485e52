"""FastAPI app serving the `production` model version with bearer-token auth.

Run it with `qaforge serve` or `uvicorn --factory serving.app:create_app` (settings
from QAFORGE_* environment variables, see `ServeSettings`).
"""

from __future__ import annotations

import threading
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from serving.auth import BearerAuth, load_tokens


class ServeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QAFORGE_")

    model_uri: str = Field(description="e.g. models:/qaforge-ev@production, or a local model folder")
    tracking_uri: str | None = None
    tokens_env: str = "QAFORGE_API_TOKENS"
    tokens_file: Path | None = None
    max_new_tokens: int = 128


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatCompletionRequest(BaseModel):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = None
    stream: Literal[False] = False


class PredictRequest(BaseModel):
    input_text: str = Field(min_length=1)


class LoadedModel:
    """The served model and the registry version it came from."""

    def __init__(self, settings: ServeSettings) -> None:
        import mlflow

        if settings.tracking_uri:
            mlflow.set_tracking_uri(settings.tracking_uri)
        self.uri = settings.model_uri
        self.version = self._resolve_version(settings.model_uri)
        self.qa = mlflow.pyfunc.load_model(settings.model_uri).unwrap_python_model()
        # generate() on one model is not safe to run from several threads at once.
        self._lock = threading.Lock()

    @staticmethod
    def _resolve_version(uri: str) -> str | None:
        from mlflow import MlflowClient

        if not uri.startswith("models:/"):
            return None
        name, sep, alias = uri.removeprefix("models:/").partition("@")
        if sep:
            return str(MlflowClient().get_model_version_by_alias(name, alias).version)
        return name.rpartition("/")[2]

    def chat(self, messages: list[dict[str, str]], max_new_tokens: int) -> Any:
        with self._lock:
            return self.qa.chat(messages, max_new_tokens)


def _openai_error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse(
        status_code=status, content={"error": {"message": message, "type": kind, "code": status}}
    )


def create_app(settings: ServeSettings | None = None) -> FastAPI:
    settings = settings or ServeSettings()
    auth = BearerAuth(load_tokens(settings.tokens_env, settings.tokens_file))
    state: dict[str, LoadedModel] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        state["model"] = await run_in_threadpool(LoadedModel, settings)
        yield

    app = FastAPI(title="qaforge", lifespan=lifespan)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        response = _openai_error(exc.status_code, str(exc.detail), "invalid_request_error")
        response.headers.update(exc.headers or {})
        return response

    @app.get("/health")
    async def health() -> dict[str, Any]:
        model = state["model"]
        return {"status": "ok", "model": model.uri, "version": model.version}

    @app.post("/predict", dependencies=[Depends(auth)])
    async def predict(body: PredictRequest) -> dict[str, Any]:
        model = state["model"]
        generation = await run_in_threadpool(
            model.chat, [{"role": "user", "content": body.input_text}], settings.max_new_tokens
        )
        return {"output_text": generation.answers[0], "model_version": model.version}

    @app.post("/v1/chat/completions", dependencies=[Depends(auth)])
    async def chat_completions(body: ChatCompletionRequest) -> dict[str, Any]:
        model = state["model"]
        max_tokens = min(body.max_tokens or settings.max_new_tokens, settings.max_new_tokens)
        generation = await run_in_threadpool(
            model.chat, [m.model_dump() for m in body.messages], max_tokens
        )
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.model or model.uri,
            "system_fingerprint": f"v{model.version}",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": generation.answers[0]},
                    "finish_reason": "length" if generation.new_tokens >= max_tokens else "stop",
                }
            ],
            "usage": {
                "prompt_tokens": generation.prompt_tokens,
                "completion_tokens": generation.new_tokens,
                "total_tokens": generation.prompt_tokens + generation.new_tokens,
            },
        }

    return app
