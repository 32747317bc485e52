"""The served API's conversation log as a document: each exchange becomes a section
headed by the user's question, so chunking and QA synthesis treat it like any page."""

from __future__ import annotations

from pydantic import ValidationError

from qaforge.records import ConversationRecord


def conversation_markdown(text: str, name: str) -> str:
    """Markdown for a JSONL conversation log; a bad line is named by its number."""
    sections = [f"# Conversations: {name}"]
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = ConversationRecord.model_validate_json(line)
        except ValidationError as exc:
            raise ValueError(f"line {number}: {exc.errors()[0]['msg']}") from None
        question = next((m["content"] for m in reversed(record.messages) if m.get("role") == "user"), "")
        if question.strip() and record.answer.strip():
            sections.append(f"## {' '.join(question.split())}\n\n{record.answer.strip()}")
    return "\n\n".join(sections) + "\n"
