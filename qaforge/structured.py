"""Constrained decoding: an answer that must be JSON matching a schema (OpenAI's
`response_format`), so that even a small local model answers a teacher's or a judge's
request in a shape a program can read.

llguidance (the grammar engine vLLM, SGLang and llama.cpp use; one wheel, no other
dependencies) compiles a JSON schema to a grammar and, before each token, says which
tokens keep the answer valid; the engine gives every other token no chance. Chosen over
xgrammar, which pulls in triton and a second FFI runtime on a CPU install, and over
lm-format-enforcer and outlines-core, which have no JSON-schema-to-mask path as direct.
"""

from __future__ import annotations

import json
import weakref
from typing import Any

import llguidance
import llguidance.hf
import llguidance.torch
import numpy as np
import torch

ANY_OBJECT: dict[str, Any] = {"type": "object"}  # `json_object`: any JSON object
# Token tables, built once per tokenizer (about a second each).
_TOKENIZERS: weakref.WeakKeyDictionary[Any, llguidance.LLTokenizer] = weakref.WeakKeyDictionary()


def json_grammar(schema: dict[str, Any] | None) -> str:
    """The grammar of JSON matching `schema` (any object when None). ValueError, saying
    what is wrong, for a schema llguidance cannot compile."""
    grammar = llguidance.LLMatcher.grammar_from_json_schema(
        json.dumps(schema if schema is not None else ANY_OBJECT),
        # No whitespace between tokens: a small model would spend its tokens on indentation.
        defaults={"whitespace_flexible": False},
    )
    failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if failed:
        raise ValueError(f"the JSON schema cannot be used: {messages[0]}")
    return grammar


def _tokenizer(hf_tokenizer: Any, vocab_size: int, eos: list[int]) -> llguidance.LLTokenizer:
    found = _TOKENIZERS.get(hf_tokenizer)
    if found is None:
        found = _TOKENIZERS[hf_tokenizer] = llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=vocab_size,
                                                                          eos_token=eos)
    return found


class Constraint:
    """One answer's grammar as it is generated: which tokens may come next, and whether
    the answer is complete."""

    def __init__(self, grammar: str, hf_tokenizer: Any, vocab_size: int, eos: list[int]) -> None:
        self.matcher = llguidance.LLMatcher(_tokenizer(hf_tokenizer, vocab_size, eos), grammar)
        if self.matcher.is_error():
            raise ValueError(f"the grammar cannot be used: {self.matcher.get_error()}")
        self.vocab_size = vocab_size
        self.bitmask = llguidance.torch.allocate_token_bitmask(1, vocab_size)

    def allowed(self) -> torch.Tensor:
        """A boolean mask over the vocabulary: the tokens that keep the answer valid (an
        end-of-sequence token only once it is complete)."""
        llguidance.torch.fill_next_token_bitmask(self.matcher, self.bitmask, 0)
        bits = np.unpackbits(self.bitmask.numpy().view(np.uint8), bitorder="little")[: self.vocab_size]
        return torch.from_numpy(bits.astype(bool))

    def consume(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise RuntimeError(f"token {token} broke the grammar: {self.matcher.get_error()}")

    @property
    def complete(self) -> bool:
        """Nothing can follow but the end: the answer is whole."""
        return self.matcher.is_stopped()
