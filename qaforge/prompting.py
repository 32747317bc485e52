"""The one prompt format used by training, evaluation and serving."""

from __future__ import annotations

import secrets
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


def encode_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of `render_prompt`, with every message's content tokenized as text.

    Tokenizing the rendered string would turn a user's typed `<|im_end|>` into the
    control token that ends their turn, so they could write the system's turn. Here the
    template's own pieces keep their special tokens and the contents never get any.
    For ordinary text the ids are the ones `tokenizer(render_prompt(...))` gives.
    """
    marker = f"\x00{secrets.token_hex(8)}\x00"
    marked = [m | {"content": f"{marker}{i}{marker}"} for i, m in enumerate(messages)]
    pieces = render_prompt(tokenizer, marked).split(marker)
    # pieces alternate: template text, a message index, template text, ...
    contents = [messages[int(i)]["content"] for i in pieces[1::2]]
    template = pieces[0::2]
    expected = render_prompt(tokenizer, messages)
    for transform in (lambda c: c, str.strip):  # some templates trim the content
        texts = [transform(c) for c in contents]
        if "".join(t + c for t, c in zip(template, [*texts, ""])) == expected:
            break
    else:
        raise ValueError("the chat template changes message contents in a way qaforge cannot reproduce")
    ids: list[int] = []
    for i, piece in enumerate(template):
        ids += tokenizer(piece, add_special_tokens=False)["input_ids"] if piece else []
        if i < len(texts) and texts[i]:
            ids += tokenizer(texts[i], add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return ids
