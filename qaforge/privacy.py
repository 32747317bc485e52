"""Personal data out of what the server keeps: e-mail addresses, phone numbers, card
numbers, US social security numbers and IP addresses in a logged conversation are
replaced by a tag (`[EMAIL_1]`) before it is written, by datafog's pattern engine (one
wheel, no model to download, microseconds a message). Names are not found: that takes
a language model (datafog's spaCy or GLiNER engines, `datafog[nlp]`), which this
install does not ship."""

from __future__ import annotations

from typing import Any

import datafog


def scrub(text: str) -> str:
    return datafog.sanitize(text, engine="regex")


def scrub_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages with their text scrubbed, every other field kept."""
    return [m | {"content": scrub(m["content"])} if isinstance(m.get("content"), str) else m for m in messages]
