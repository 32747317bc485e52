"""What goes over the wire: request and response bodies in OpenAI's shapes, validated
strictly (a string is not a boolean, `true` is not a number), and the one error shape
every failure is answered in."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from fastapi.responses import JSONResponse
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    create_model,
    field_validator,
    model_validator,
)
from starlette.exceptions import HTTPException

from qaforge.config import ServingConfig
from qaforge.records import Rating, joined_text_parts

# OpenAI's limit on stop sequences.
MAX_STOP_SEQUENCES = 4


def _encodable(text: str) -> str:
    """Reject lone surrogates ("\\ud800" in JSON): they are not Unicode text, and no
    tokenizer can encode them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"contains {text[exc.start]!r} at position {exc.start}, which is not valid Unicode "
                         "(a lone surrogate)") from None
    return text


Text = Annotated[str, AfterValidator(_encodable)]


class _Request(BaseModel):
    # Unknown fields are ignored, as OpenAI clients send many; known ones are strict.
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


TEXT_PARTS_SCHEMA = {"anyOf": [{"type": "string"}, {"type": "array", "items": {
    "type": "object", "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
    "required": ["type", "text"]}}]}


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[Text, BeforeValidator(joined_text_parts), WithJsonSchema(TEXT_PARTS_SCHEMA)]

    @field_validator("role")
    @classmethod
    def _developer_is_system(cls, role: str) -> str:
        """Newer OpenAI clients send the system turn as `developer`: it means the same."""
        return "system" if role == "developer" else role


class StreamOptions(_Request):
    include_usage: bool = False


class JsonSchemaSpec(_Request):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema", description="Default: any JSON object.")
    strict: bool | None = Field(default=None, description="Always held to: the answer is decoded to match.")


class ResponseFormat(_Request):
    """OpenAI's `response_format`: `json_object` (any object) or `json_schema` answers are
    decoded under the schema's grammar, so they parse and match it (unless `max_tokens`
    cuts them: finish_reason `length`)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type json_schema needs a `json_schema` object: {name, schema}")
        return self

    def constrained(self) -> bool:
        return self.type != "text"

    def answer_schema(self) -> dict[str, Any] | None:
        """The schema a constrained answer must match; None: any JSON object."""
        return self.json_schema.schema_ if self.json_schema else None


class ChatCompletionRequest(_Request):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0, le=2, description="0 (or below 1e-4): greedy.")
    top_p: float = Field(default=1.0, gt=0, le=1)
    stop: Text | list[Text] | None = Field(default=None, description="Up to 4 sequences that end the answer.")
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    n: Literal[1] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    user: str | None = None

    def stop_sequences(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


def limited_chat_request(settings: ServingConfig) -> type[ChatCompletionRequest]:
    """The request model with this server's limits, so that they are validated with
    the rest of the body and published in the OpenAPI schema."""
    stop = Annotated[Text, Field(min_length=1, max_length=settings.max_stop_chars)]
    tokens = Field(default=None, ge=1, le=settings.max_tokens_limit)
    return create_model(
        "ChatCompletionRequest",
        __base__=ChatCompletionRequest,
        messages=(list[ChatMessage], Field(min_length=1, max_length=settings.max_messages)),
        max_tokens=(int | None, tokens),
        max_completion_tokens=(int | None, tokens),
        stop=(stop | Annotated[list[stop], Field(max_length=MAX_STOP_SEQUENCES)] | None,
              Field(default=None, description="Up to 4 sequences that end the answer.")),
    )


class FeedbackRequest(_Request):
    request_id: str = Field(min_length=1, max_length=128, description="The x-request-id of the answer's response.")
    rating: Rating = Field(strict=False)  # strict would take only the enum object, never its JSON string


class FeedbackResponse(BaseModel):
    request_id: str
    rating: Rating


class PredictRequest(_Request):
    input_text: Text = Field(min_length=1)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]


class Source(BaseModel):
    """A passage the answer was given to work from."""

    title: str
    source: str = Field(description="The page's URL or the file's path.")
    chunk_id: str
    score: float = Field(description="BM25 score for the question.")


SOURCES_DESCRIPTION = (
    "qaforge's addition: the passages retrieved for the question, best first, when the model answers from "
    "passages (null otherwise). OpenAI clients keep unknown fields, so they work unchanged."
)


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str | None
    choices: list[Choice]
    usage: Usage
    sources: list[Source] | None = Field(default=None, description=SOURCES_DESCRIPTION)


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "qaforge"
    version: str | None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class PredictResponse(BaseModel):
    output_text: str
    model_version: str | None
    sources: list[Source] | None = Field(default=None, description=SOURCES_DESCRIPTION)


class Health(BaseModel):
    status: Literal["ok"]
    model: str
    version: str | None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class APIError(HTTPException):
    """An error answered in OpenAI's shape. An HTTPException, so FastAPI passes it on
    when a middleware raises it while the request body is read."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status, message, headers or {})
        self.status, self.message, self.kind, self.code, self.param = status, message, kind, code, param

    def response(self) -> JSONResponse:
        body = ErrorResponse(error=ErrorDetail(message=self.message, type=self.kind, param=self.param, code=self.code))
        return JSONResponse(status_code=self.status, content=body.model_dump(), headers=self.headers)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the errors a route can answer."""
    reasons = {
        400: "Invalid request: a field, a limit or the body.",
        401: "No API key, or an unknown one.",
        403: "The API key has been revoked.",
        404: "No such model or path.",
        408: "The client took too long to send its request body.",
        413: "The request body is over the size limit.",
        431: "The request headers are over the size limit.",
        429: "Rate limit reached; Retry-After says when to try again.",
    }
    return {status: {"model": ErrorResponse, "description": reasons[status]} for status in statuses}
