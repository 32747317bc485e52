"""The one prompt format used by training, evaluation and serving."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qaforge.records import Turn


def build_messages(
    question: str, system_prompt: str | None, history: Sequence[Turn] = ()
) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for turn in history:
        messages += [
            {"role": "user", "content": turn.question},
            {"role": "assistant", "content": turn.answer},
        ]
    messages.append({"role": "user", "content": question})
    return messages


def with_system_prompt(messages: list[dict[str, str]], system_prompt: str | None) -> list[dict[str, str]]:
    """A served conversation without its own system message gets the trained one."""
    if system_prompt and not any(m["role"] == "system" for m in messages):
        return [{"role": "system", "content": system_prompt}, *messages]
    return messages


def render_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """Chat-template text up to where the assistant's answer starts.

    trl builds its prompt/completion training examples with this same call, so a
    prompt rendered here is token-for-token the prompt the model was trained on.
    """
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
