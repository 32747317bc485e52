"""Training throughput: qaforge's SFT (loss on answers only, length-grouped batches,
or packing) against a naive transformers Trainer (every row padded to max_length, no
packing), on the default corpus's training pairs with the same model, method and
steps; and qaforge in fp32 and in bf16 autocast, to show that the `auto` precision
is the faster one on this CPU. Each variant runs in its own process, so peak memory
is its own. MFU is the model FLOPs a variant's tokens/s stands for (2 per parameter per
token forward, 4 more for each weight that gets a gradient, 2 more for LoRA's frozen
weights, whose inputs still do) over this CPU's measured matmul peak in that precision.
With `training.trainable_layers` set, every layer is trained too, for comparison.
`--raft` trains on the RAFT examples (each question with `retrieval.top_k` retrieved
passages) instead of closed-book ones.

    python bench/train.py [--steps 10] [--raft]
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from qaforge.config import CONTEXT_MARGIN_TOKENS, ContextTraining, Method, TrainingConfig
from qaforge.hardware import Precision
from qaforge.retrieval import Retriever
from qaforge.synthesis import synthesize

from common import default_chunks, default_config


def naive(pairs: list, base_dir: str, cfg: TrainingConfig, out: Path) -> dict[str, float]:
    """A plain transformers Trainer: chat-formatted text padded to max_length, loss on every token."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    from qaforge.hardware import Device, Precision
    from qaforge.modeling import load_tokenizer
    from qaforge.training import load_trainable_model, training_compute

    tokenizer = load_tokenizer(base_dir)
    texts = [
        tokenizer.apply_chat_template(
            [*p["prompt"], *p["completion"]], tokenize=False
        )
        for p in pairs
    ]
    encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=cfg.max_length)
    encoded["labels"] = [
        [t if m else -100 for t, m in zip(ids, mask)] for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"])
    ]
    compute = training_compute(cfg)
    model = load_trainable_model(base_dir, cfg.method, compute)
    if cfg.method != "full":
        model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules="all-linear"))
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(out), max_steps=cfg.max_steps, per_device_train_batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate, logging_steps=cfg.max_steps, save_strategy="no", report_to="none",
            bf16=compute.precision is Precision.BF16, use_cpu=compute.device is Device.CPU,
            include_num_input_tokens_seen="non_padding", disable_tqdm=True, seed=cfg.seed,
        ),
        train_dataset=Dataset.from_dict(dict(encoded)),
    )
    start = time.perf_counter()
    trainer.train()
    return {"seconds": time.perf_counter() - start, "tokens": trainer.state.num_input_tokens_seen}


def qaforge(pairs: list, base_dir: str, cfg: TrainingConfig, out: Path) -> dict[str, float]:
    from datasets import Dataset

    from qaforge.training import fit

    start = time.perf_counter()
    result = fit(Dataset.from_list(pairs), None, base_dir, cfg, out)
    return {"seconds": time.perf_counter() - start, "tokens": result.history[-1]["num_input_tokens_seen"]}


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeat: int = 10) -> float:
    """FLOP/s of a large square matmul in `dtype` on this CPU, with torch's threads: the
    most any training step can do."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b  # warm-up: oneDNN picks and caches its kernel
    start = time.perf_counter()
    for _ in range(repeat):
        a @ b
    return 2 * size**3 * repeat / (time.perf_counter() - start)


def run(variant: str, pairs: list, base_dir: str, cfg: TrainingConfig) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        result = (naive if variant == "naive" else qaforge)(pairs, base_dir, cfg, Path(tmp))
    return result | {"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--raft", action="store_true", help="train on RAFT examples (with retrieved passages)")
    args = parser.parse_args()
    from qaforge.hardware import Machine
    from qaforge.modeling import resolve_base_model
    from qaforge.training import examples, sft_dataset, training_compute, with_passages

    config = default_config()
    chunks = default_chunks(config)
    data = synthesize(chunks, config.synthesis)
    found = examples(data.train)
    cfg = config.training.model_copy(update={"max_steps": args.steps, "eval_steps": None, "early_stopping_patience": None})
    if args.raft:
        top_k = config.retrieval.top_k
        found = with_passages(found, Retriever.build(chunks), top_k, cfg.context or ContextTraining(), cfg.seed)
        cfg = cfg.model_copy(update={"max_length": max(cfg.max_length,
                                                       top_k * config.chunking.max_tokens + CONTEXT_MARGIN_TOKENS)})
    pairs = sft_dataset(found, config.prompt.system_prompt).to_list()
    base_dir = resolve_base_model(config.model)
    parameters = AutoConfig.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_config(parameters)
    n_params = sum(p.numel() for p in model.parameters())

    def flops_per_token(variant_cfg: TrainingConfig) -> float:
        if variant_cfg.method is not Method.FULL:
            return 4 * n_params
        if variant_cfg.trainable_layers is None:
            return 6 * n_params
        top = model.get_decoder().layers[-variant_cfg.trainable_layers:]
        return 2 * n_params + 4 * sum(p.numel() for p in top.parameters())

    peaks = {Precision.FP32: matmul_peak(torch.float32), Precision.BF16: matmul_peak(torch.bfloat16)}
    machine = Machine.detect()
    auto = training_compute(cfg, machine)
    variants = {
        f"naive Trainer (pad, {auto.precision.value})": ("naive", cfg.model_copy(update={"trainable_layers": None})),
        "qaforge fp32 (length-grouped)": ("qaforge", cfg.model_copy(update={"precision": Precision.FP32})),
        "qaforge bf16 autocast": ("qaforge", cfg.model_copy(update={"precision": Precision.BF16})),
        f"qaforge packing ({auto.precision.value})": ("qaforge", cfg.model_copy(update={"packing": True})),
    }
    if cfg.trainable_layers is not None:
        variants[f"qaforge every layer ({auto.precision.value})"] = (
            "qaforge", cfg.model_copy(update={"trainable_layers": None}))
    print(f"CPU capability {machine.cpu_capability}, native bf16: {'yes' if machine.native_cpu_bf16 else 'no'}, "
          f"{machine.threads} torch threads; auto choice: {auto}")
    print(f"{len(pairs)} training pairs, {cfg.method}, batch {cfg.batch_size}, max_length {cfg.max_length}, "
          f"{args.steps} steps per variant")
    results = {}
    spawn = multiprocessing.get_context("spawn")
    for name, (variant, variant_cfg) in variants.items():
        with spawn.Pool(1) as pool:
            results[name] = pool.apply(run, (variant, pairs, base_dir, variant_cfg))
    baseline = next(iter(results.values()))
    base_rate = baseline["tokens"] / baseline["seconds"]
    print("matmul peak: " + ", ".join(f"{p.value} {flops / 1e9:.0f} GFLOP/s" for p, flops in peaks.items())
          + f"; {n_params / 1e6:.0f}M parameters, {flops_per_token(cfg) / n_params:.1f} FLOPs per parameter per "
          f"token" + (f" (top {cfg.trainable_layers} layers trained)" if cfg.trainable_layers else ""))
    print(f"{'variant':<36}{'s/step':>8}{'tokens/s':>10}{'x naive':>9}{'MFU':>7}{'peak MB':>9}")
    for name, r in results.items():
        rate = r["tokens"] / r["seconds"]
        precision = variants[name][1].precision if variants[name][1].precision in peaks else auto.precision
        mfu = rate * flops_per_token(variants[name][1]) / peaks[precision]
        print(f"{name:<36}{r['seconds'] / args.steps:>8.2f}{rate:>10.0f}{rate / base_rate:>9.2f}{mfu:>7.1%}"
              f"{r['peak_mb']:>9.0f}")
    fp32, bf16 = results["qaforge fp32 (length-grouped)"]["seconds"], results["qaforge bf16 autocast"]["seconds"]
    faster = Precision.FP32 if fp32 <= bf16 else Precision.BF16
    verdict = "the faster one" if faster is auto.precision else f"NOT the faster one ({faster.value} is)"
    print(f"auto picks {auto.precision.value}: {verdict}, fp32 {fp32 / args.steps:.2f} vs bf16 {bf16 / args.steps:.2f} s/step")


if __name__ == "__main__":
    main()
