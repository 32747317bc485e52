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

from qaforge.config import ModelConfig
from qaforge.prompting import render_prompt

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


def load_for_inference(path: str) -> tuple[Any, Any]:
    tokenizer = load_tokenizer(path)
    tokenizer.padding_side = "left"  # generation continues from the right edge
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
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


@torch.inference_mode()
def generate_answers(
    model: Any,
    tokenizer: Any,
    conversations: list[list[dict[str, str]]],
    max_new_tokens: int,
    batch_size: int = 8,
    **generate_kwargs: Any,
) -> Generation:
    """Answers to each conversation (see `prompting.build_messages`), in batches;
    greedy unless `generate_kwargs` ask for sampling (or pass a streamer)."""
    answers: list[str] = []
    prompt_tokens: list[int] = []
    completion_tokens: list[int] = []
    start = time.perf_counter()
    for i in range(0, len(conversations), batch_size):
        prompts = [render_prompt(tokenizer, c) for c in conversations[i : i + batch_size]]
        # The chat template already carries the special tokens.
        batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        output = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            # generate() matches stop strings with the tokenizer.
            **({"do_sample": False} | generate_kwargs | ({"tokenizer": tokenizer} if "stop_strings" in generate_kwargs else {})),
        )
        generated = output[:, batch["input_ids"].shape[1] :]
        prompt_tokens += batch["attention_mask"].sum(dim=1).tolist()
        completion_tokens += (generated != tokenizer.pad_token_id).sum(dim=1).tolist()
        answers.extend(
            text.strip() for text in tokenizer.batch_decode(generated, skip_special_tokens=True)
        )
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
    batch_size: int = 8,
) -> list[tuple[float, int]]:
    """(summed negative log-likelihood, token count) of each reference answer after its
    prompt: the perplexity a model assigns to the answers it should give."""
    results: list[tuple[float, int]] = []
    for i in range(0, len(conversations), batch_size):
        rows = []
        for messages, answer in zip(conversations[i : i + batch_size], answers[i : i + batch_size]):
            prompt = tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]
            answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
            rows.append((prompt + answer_ids, len(prompt)))
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        labels = torch.full((len(rows), width), -100)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (ids, prompt_len) in enumerate(rows):
            input_ids[r, : len(ids)] = torch.tensor(ids)
            labels[r, prompt_len : len(ids)] = torch.tensor(ids[prompt_len:])
            mask[r, : len(ids)] = 1
        logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
        targets = labels[:, 1:]
        nll = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), targets, ignore_index=-100, reduction="none"
        )
        counted = targets != -100
        results.extend(
            (float(nll[r][counted[r]].sum()), int(counted[r].sum())) for r in range(len(rows))
        )
    return results


def time_single_requests(
    model: Any, tokenizer: Any, conversations: list[list[dict[str, str]]], max_new_tokens: int
) -> list[Generation]:
    """Each conversation answered alone, as one API request would be: for latency."""
    return [generate_answers(model, tokenizer, [c], max_new_tokens, batch_size=1) for c in conversations]
