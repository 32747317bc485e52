"""Locating, loading and running the base and fine-tuned models."""

from __future__ import annotations

import importlib.util
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from qaforge.config import InferenceOptions, ModelConfig
from qaforge.hardware import Machine, decide, quantization_config
from qaforge.prompting import encode_prompt

log = logging.getLogger(__name__)


def _gguf_dir(name_or_path: str) -> str:
    """Where a GGUF file lives: a local folder, an installed package, or an HF repo id."""
    if Path(name_or_path).is_dir():
        return name_or_path
    spec = importlib.util.find_spec(name_or_path) if name_or_path.isidentifier() else None
    if spec and spec.submodule_search_locations:
        return spec.submodule_search_locations[0]
    return name_or_path


def resolve_base_model(cfg: ModelConfig) -> str:
    """Return a local directory (or HF id) that `from_pretrained` loads quickly.

    A GGUF model is dequantized once into `cache_dir` and loaded from there after,
    which takes a fraction of a second instead of about 20 s.
    """
    if not cfg.gguf_file:
        return cfg.name_or_path
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{cfg.name_or_path}--{cfg.gguf_file}")
    target = Path(cfg.cache_dir).resolve() / slug
    if (target / "config.json").exists():
        return str(target)
    source = _gguf_dir(cfg.name_or_path)
    log.info("Dequantizing %s/%s into %s (once)", source, cfg.gguf_file, target)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=cfg.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=cfg.gguf_file)
    # The dequantized weights are plain floats; without this, save_pretrained
    # would record a GGUF quantization config that nothing can load.
    model.hf_quantizer = None
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
        model = AutoModelForCausalLM.from_pretrained(path, dtype=compute.dtype).to(compute.device.value)
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

    @property
    def new_tokens(self) -> int:
        return sum(self.completion_tokens)


def length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices in batches of similar length, so little compute goes to padding. Each
    batch keeps its rows in input order: one batch is exactly the input."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [sorted(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def generate_answers(
    model: Any,
    tokenizer: Any,
    conversations: list[list[dict[str, str]]],
    max_new_tokens: int,
    batch_size: int = 32,
    **generate_kwargs: Any,
) -> Generation:
    """Answers to each conversation (see `prompting.build_messages`), in input order,
    generated in batches of similar prompt length; greedy unless `generate_kwargs` ask
    for sampling (or pass a streamer)."""
    n = len(conversations)
    answers, prompt_tokens, completion_tokens = [""] * n, [0] * n, [0] * n
    encoded = [encode_prompt(tokenizer, c) for c in conversations]
    start = time.perf_counter()
    for rows in length_batches([len(ids) for ids in encoded], batch_size):
        batch = tokenizer.pad({"input_ids": [encoded[r] for r in rows]}, return_tensors="pt").to(model.device)
        output = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            # generate() matches stop strings with the tokenizer.
            **({"do_sample": False} | generate_kwargs | ({"tokenizer": tokenizer} if "stop_strings" in generate_kwargs else {})),
        )
        generated = output[:, batch["input_ids"].shape[1] :]
        texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
        for r, text, new in zip(rows, texts, (generated != tokenizer.pad_token_id).sum(dim=1).tolist()):
            answers[r], prompt_tokens[r], completion_tokens[r] = text.strip(), len(encoded[r]), new
    return Generation(
        answers=answers,
        seconds=time.perf_counter() - start,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    )


@torch.inference_mode()
def reference_nll(
    model: Any,
    tokenizer: Any,
    conversations: list[list[dict[str, str]]],
    answers: list[str],
    batch_size: int = 32,
) -> list[tuple[float, int]]:
    """(summed negative log-likelihood, token count) of each reference answer after its
    prompt: the perplexity a model assigns to the answers it should give."""
    rows = []
    for messages, answer in zip(conversations, answers):
        prompt = encode_prompt(tokenizer, messages)
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        rows.append((prompt + answer_ids, len(prompt)))
    results: list[tuple[float, int]] = [(0.0, 0)] * len(rows)
    for batch in length_batches([len(ids) for ids, _ in rows], batch_size):
        # Padded on the left, every answer ends at the last position, so the model
        # computes vocabulary logits only for the last `keep` positions: the answers.
        width = max(len(rows[r][0]) for r in batch)
        keep = max(len(rows[r][0]) - rows[r][1] for r in batch) + 1
        input_ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, r in enumerate(batch):
            ids, prompt_len = rows[r]
            start = width - len(ids)
            input_ids[i, start:] = torch.tensor(ids)
            labels[i, start + prompt_len :] = torch.tensor(ids[prompt_len:])
            mask[i, start:] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        input_ids, labels, mask, positions = (t.to(model.device) for t in (input_ids, labels, mask, positions))
        logits = model(
            input_ids=input_ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep
        ).logits[:, :-1].float()
        targets = labels[:, width - keep + 1 :]
        nll = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), targets, ignore_index=-100, reduction="none"
        )
        counted = targets != -100
        for i, r in enumerate(batch):
            results[r] = (float(nll[i][counted[i]].sum()), int(counted[i].sum()))
    return results


def time_single_requests(
    model: Any, tokenizer: Any, conversations: list[list[dict[str, str]]], max_new_tokens: int
) -> list[Generation]:
    """Each conversation answered alone, as one API request would be: for latency."""
    return [generate_answers(model, tokenizer, [c], max_new_tokens, batch_size=1) for c in conversations]
