"""Question-answer data a team already has (`sources.qa`): OpenAI messages, ChatML or
Alpaca JSONL, or CSV. Every line is checked before anything is used, and all the bad
ones are named at once by file, line and field, so a 2,000-pair file is fixed in one
pass. Each pair's document is its file and its group, so that the split keeps a
group's pairs together as it keeps a page's."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from qaforge.config import FeedbackFilter, QAFormat, QASource
from qaforge.records import FeedbackRecord, QAPair, Rating, Turn, joined_text_parts

IMPORTED = "imported"  # the kind of a pair read from sources.qa
MAX_LISTED = 10  # bad lines named in one error; the count says how many more
CHATML_TURN = re.compile(r"<\|im_start\|>(\w+)\n(.*?)<\|im_end\|>", re.DOTALL)
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# A JSONL file's shape, by a field of its first line.
SHAPE_FIELDS = {"messages": QAFormat.MESSAGES, "text": QAFormat.CHATML, "instruction": QAFormat.ALPACA}


class QAFileError(ValueError):
    """Lines of a `sources.qa` file that cannot be read as pairs."""


class _BadLine(ValueError):
    """One line's problem: the field, and what is wrong with it."""


def qa_format(source: QASource) -> QAFormat:
    """The configured format, else csv for a .csv file, else the JSONL shape of the first line."""
    if source.format is not None:
        return source.format
    if source.path.suffix.lower() == ".csv":
        return QAFormat.CSV
    for number, line in _lines(source.path):
        try:
            first = json.loads(line)
        except json.JSONDecodeError as exc:
            raise QAFileError(f"{source.path}:{number}: not JSON ({exc.msg}); a .csv file needs the .csv suffix or "
                              "`format: csv`") from None
        found = [fmt for field, fmt in SHAPE_FIELDS.items() if isinstance(first, dict) and field in first]
        if len(found) != 1:
            raise QAFileError(
                f"{source.path}:{number}: cannot tell the format from the fields "
                f"{sorted(first) if isinstance(first, dict) else type(first).__name__}: a line has one of "
                f"{', '.join(SHAPE_FIELDS)} (messages, chatml, alpaca), or set `format`")
        return found[0]
    raise QAFileError(f"{source.path}: no pairs: the file is empty")


def ratings(path: Path) -> dict[str, Rating]:
    """Each rated request's latest rating in a feedback log (serving.feedback_log)."""
    latest: dict[str, Rating] = {}
    for number, line in _lines(path):
        try:
            record = FeedbackRecord.model_validate_json(line)
        except ValidationError as exc:
            raise QAFileError(f"{path}:{number}: not a feedback record: {exc.errors()[0]['msg']}") from None
        latest[record.request_id] = record.rating
    return latest


def _rated_as_kept(row: dict[str, Any], rated: dict[str, Rating], keep: FeedbackFilter) -> bool:
    request_id = row.get("request_id")
    if not isinstance(request_id, str):
        raise _BadLine("request_id: missing, and `feedback` matches ratings to lines by it")
    rating = rated.get(request_id)
    return rating is Rating.UP if keep is FeedbackFilter.UP else rating is not Rating.DOWN


def read_qa_file(source: QASource) -> list[QAPair]:
    """Every pair of the file (of the lines its feedback keeps, given one), or
    QAFileError naming each bad line."""
    fmt = qa_format(source)
    rated = ratings(source.feedback) if source.feedback else None
    rows = _csv_rows(source) if fmt is QAFormat.CSV else _json_rows(source.path)
    pairs: list[QAPair] = []
    errors: list[str] = []
    for number, row in rows:
        try:
            if isinstance(row, str):
                raise _BadLine(row)
            if rated is not None and not _rated_as_kept(row, rated, source.keep):
                continue
            group = row.get(source.group_field)
            if group is not None and not isinstance(group, str | int):
                raise _BadLine(f"{source.group_field}: a string or a number, not {type(group).__name__}")
            doc_id = f"{source.path.name}#{group if group not in (None, '') else f'line {number}'}"
            for history, question, answer in _turns(row, fmt, source):
                pairs.append(QAPair(history=history, question=question, answer=answer, chunk_id="", doc_id=doc_id,
                                    source=source.path.name, kind=IMPORTED, grounding=0.0))
        except _BadLine as exc:
            errors.append(f"{source.path}:{number}: {exc}")
    if errors:
        listed = errors[:MAX_LISTED] + ([f"... and {len(errors) - MAX_LISTED} more"] if len(errors) > MAX_LISTED else [])
        raise QAFileError(f"{len(errors)} bad line(s) in {source.path} ({fmt} format):\n  " + "\n  ".join(listed))
    if not pairs:
        kept = f" rated as `keep: {source.keep}` asks in {source.feedback}" if source.feedback else ""
        raise QAFileError(f"{source.path}: no pairs{kept}")
    return pairs


def read_qa_sources(sources: list[QASource]) -> list[QAPair]:
    return [pair for source in sources for pair in read_qa_file(source)]


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise QAFileError(f"{path}: cannot read it: {exc}") from None
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            yield number, line


def _json_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line number, the line's object, or what is wrong with it)."""
    for number, line in _lines(path):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, f"not JSON: {exc.msg} at column {exc.colno}"
            continue
        yield number, row if isinstance(row, dict) else f"a JSON object, not {type(row).__name__}"


def _csv_rows(source: QASource) -> Iterator[tuple[int, dict[str, Any] | str]]:
    try:
        with source.path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            missing = [c for c in (source.question_column, source.answer_column) if c not in columns]
            if missing:
                raise QAFileError(
                    f"{source.path}:1: no column {' or '.join(map(repr, missing))} in the header {columns}: name the "
                    "columns with question_column and answer_column")
            for row in reader:
                # The line a row ends on: a quoted cell may span several.
                yield reader.line_num, row if None not in row else "more cells than the header has columns"
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise QAFileError(f"{source.path}: cannot read it as CSV: {exc}") from None


def _text(row: dict[str, Any], field: str, required: bool = True) -> str:
    value = row.get(field)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise _BadLine(f"{field}: missing or empty")
        return ""
    if not isinstance(value, str):
        raise _BadLine(f"{field}: a string, not {type(value).__name__}")
    return value.strip()


def _turns(row: dict[str, Any], fmt: QAFormat, source: QASource) -> list[tuple[list[Turn], str, str]]:
    """(earlier turns, question, answer) of each answer the row holds."""
    if fmt is QAFormat.CSV:
        return [([], _text(row, source.question_column), _text(row, source.answer_column))]
    if fmt is QAFormat.ALPACA:
        instruction, extra = _text(row, "instruction"), _text(row, "input", required=False)
        return [([], f"{instruction}\n\n{extra}" if extra else instruction, _text(row, "output"))]
    if fmt is QAFormat.CHATML:
        text = _text(row, "text")
        turns = [{"role": role, "content": content} for role, content in CHATML_TURN.findall(text)]
        if not turns:
            raise _BadLine("text: no <|im_start|>role ... <|im_end|> turns")
        return _conversation(turns, "text")
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadLine("messages: a non-empty list of {role, content} objects")
    return _conversation(messages, "messages")


def _conversation(messages: list[Any], field: str) -> list[tuple[list[Turn], str, str]]:
    """Each assistant turn after a user turn is a pair whose history is the turns
    before it; an assistant turn with `"weight": 0` (OpenAI's "do not train on this")
    is history only."""
    found: list[tuple[list[Turn], str, str]] = []
    history: list[Turn] = []
    question: str | None = None
    for i, message in enumerate(messages):
        where = f"{field}[{i}]"
        if not isinstance(message, dict):
            raise _BadLine(f"{where}: a {{role, content}} object, not {type(message).__name__}")
        role = ROLES.get(message.get("role"))  # type: ignore[arg-type]
        if role is None:
            raise _BadLine(f"{where}.role: {message.get('role')!r} is not one of {', '.join(ROLES)}")
        try:
            content = joined_text_parts(message.get("content"))
        except ValueError as exc:
            raise _BadLine(f"{where}.content: {exc}") from None
        if not isinstance(content, str) or not content.strip():
            raise _BadLine(f"{where}.content: missing or empty")
        if role == "system":
            continue
        if role == "user":
            if question is not None:
                raise _BadLine(f"{where}: a user turn after a user turn; a pair is a user turn, then an assistant one")
            question = content.strip()
            continue
        if question is None:
            raise _BadLine(f"{where}: an assistant turn with no user turn before it")
        if message.get("weight", 1) != 0:
            found.append((list(history), question, content.strip()))
        history.append(Turn(question=question, answer=content.strip()))
        question = None
    if not found:
        raise _BadLine(f"{field}: no user turn answered by an assistant turn")
    return found
