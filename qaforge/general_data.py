"""Question/answer data read from JSONL: the general (not domain) data shipped with
qaforge (replay examples mixed into training, the forgetting guard's held-out general
questions) and users' own gold question sets."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, Field, ValidationError

from qaforge.records import Turn

T = TypeVar("T", bound=BaseModel)


class ReplayExample(BaseModel):
    question: str = Field(min_length=1)
    answer: str = Field(min_length=1)


class GeneralQuestion(BaseModel):
    question: str = Field(min_length=1)
    answer: str = Field(min_length=1)
    accept: list[str] = Field(min_length=1, description="Short answers, any of which counts as correct.")
    topic: str = ""


class GoldQuestion(BaseModel):
    """A question users ask, with an answer written by people (`evaluation.gold`)."""

    question: str = Field(min_length=1)
    answer: str = Field(min_length=1)
    category: str = ""
    group: str = Field(default="", description="Questions that stand or fall together (e.g. about one page) "
                       "share a group; intervals resample whole groups.")
    history: list[Turn] = Field(
        default_factory=list, description="Earlier turns of the conversation, for a follow-up question: asked "
        "with them, and retrieved for with the turn before, as the server does."
    )


def read_jsonl(path: Path, schema: type[T]) -> list[T]:
    """Every line of a JSONL file as `schema`; a bad line is named with its number."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(schema.model_validate_json(line))
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(map(str, problem["loc"])) or "line"
            raise ValueError(f"{path}:{number}: {where}: {problem['msg']}") from None
    if not records:
        raise ValueError(f"{path}: no records")
    return records
