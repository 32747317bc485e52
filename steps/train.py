"""Train: QLoRA, LoRA or full SFT with trl, loss on the answer tokens only, val loss
every N steps with early stopping, optional replay of general data; a LoRA adapter
is then merged into a full-precision copy of the base model, and the model logged
to MLflow."""

from __future__ import annotations

import hashlib
import logging
import random
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from transformers import AutoModelForCausalLM, EarlyStoppingCallback, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint
from trl import SFTConfig, SFTTrainer
from zenml import step

from qaforge.config import ModelConfig, PromptConfig, ReplayConfig, TrainingConfig, config_hash
from qaforge.general_data import ReplayExample, read_jsonl
from qaforge.hardware import Compute, Device, Machine, Precision, Quantization, decide_training, quantization_config
from qaforge.mlflow_model import log_qa_model
from qaforge.modeling import load_tokenizer, resolve_base_model
from qaforge.prompting import build_messages
from qaforge.records import QADataset, QAPair, TrainedModel

log = logging.getLogger(__name__)


def sft_dataset(
    pairs: list[QAPair], system_prompt: str | None, replay: list[ReplayExample] = ()
) -> Dataset:
    """Conversational prompt/completion rows: trl masks the prompt out of the loss."""
    examples = [(p.question, p.answer, p.history) for p in pairs] + [(r.question, r.answer, ()) for r in replay]
    return Dataset.from_list(
        [
            {
                "prompt": build_messages(question, system_prompt, history),
                "completion": [{"role": "assistant", "content": answer}],
            }
            for question, answer, history in examples
        ]
    )


def replay_sample(cfg: ReplayConfig, n_train: int, seed: int) -> list[ReplayExample]:
    """`ratio` replay examples per training pair: the shuffled pool, cycled if it runs out."""
    pool = read_jsonl(cfg.path, ReplayExample)
    order = random.Random(seed).sample(range(len(pool)), len(pool))
    return [pool[order[i % len(pool)]] for i in range(max(1, round(cfg.ratio * n_train)))]


def training_compute(cfg: TrainingConfig, machine: Machine | None = None) -> Compute:
    return decide_training(machine or Machine.detect(), cfg.device, cfg.precision)


def load_trainable_model(base_dir: str, method: str, compute: Compute) -> Any:
    """fp32 master weights (bf16/fp16 come from autocast), or for QLoRA a 4-bit NF4
    base that computes in the chosen precision."""
    if method in ("lora", "full"):
        return AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    # Always a fresh instance: on some CPUs a 4-bit model that ran any inference before
    # training has its weights repacked by bitsandbytes and then gets wrong LoRA gradients.
    return AutoModelForCausalLM.from_pretrained(
        base_dir,
        quantization_config=quantization_config(Quantization.NF4, compute),
        **({"device_map": {"": 0}} if compute.device is Device.CUDA else {}),
    )


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class MlflowStepMetrics(TrainerCallback):
    """Per-step train loss, val loss, learning rate, grad norm, tokens/s and peak
    memory into the active MLflow run."""

    NAMES = {
        "loss": "train/loss",
        "learning_rate": "train/learning_rate",
        "grad_norm": "train/grad_norm",
        "train_tokens_per_second": "train/tokens_per_s",
        "num_input_tokens_seen": "train/tokens_seen",
        "eval_loss": "val/loss",
    }

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001, ANN201
        metrics = {self.NAMES[k]: float(v) for k, v in (logs or {}).items() if k in self.NAMES}
        if metrics and mlflow.active_run():
            mlflow.log_metrics({**metrics, "train/peak_memory_mb": peak_memory_mb()}, step=state.global_step)


@dataclass
class FitResult:
    model_dir: Path  # the adapter, or the whole model for full fine-tuning
    train_loss: float
    steps: int
    best_val_loss: float | None
    history: list[dict[str, float]]


def sft_config(cfg: TrainingConfig, output_dir: Path, evaluate: bool, compute: Compute) -> SFTConfig:
    return SFTConfig(
        output_dir=str(output_dir),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_steps,
        activation_checkpointing=cfg.gradient_checkpointing,
        max_length=cfg.max_length,
        packing=cfg.packing,
        # Without packing, batches of similar length waste little compute on padding.
        train_sampling_strategy="random" if cfg.packing else "group_by_length",
        eval_strategy="steps" if evaluate else "no",
        eval_steps=cfg.eval_steps,
        load_best_model_at_end=evaluate and cfg.early_stopping_patience is not None,
        metric_for_best_model="eval_loss",
        logging_steps=cfg.logging_steps,
        include_num_input_tokens_seen="non_padding",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=compute.precision is Precision.BF16,
        fp16=compute.precision is Precision.FP16,
        use_cpu=compute.device is Device.CPU,
        report_to="none",
    )


def fit(
    train_set: Dataset,
    val_set: Dataset | None,
    base_dir: str,
    cfg: TrainingConfig,
    work_dir: Path,
    compute: Compute | None = None,
) -> FitResult:
    """SFT with trl; resumes from the last checkpoint in `work_dir` if there is one."""
    compute = compute or training_compute(cfg)
    evaluate = cfg.eval_steps is not None and val_set is not None and len(val_set) > 0
    args = sft_config(cfg, work_dir / "checkpoints", evaluate, compute)
    callbacks: list[TrainerCallback] = [MlflowStepMetrics()]
    if args.load_best_model_at_end:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    trainer = SFTTrainer(
        model=load_trainable_model(base_dir, cfg.method, compute),
        args=args,
        train_dataset=train_set,
        eval_dataset=val_set if evaluate else None,
        processing_class=load_tokenizer(base_dir),
        peft_config=None
        if cfg.method == "full"
        else LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        ),
        callbacks=callbacks,
    )
    checkpoint = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
    if checkpoint:
        log.info("resuming training from %s", checkpoint)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    model_dir = work_dir / ("model" if cfg.method == "full" else "adapter")
    trainer.save_model(str(model_dir))
    eval_losses = [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e]
    return FitResult(
        model_dir=model_dir,
        train_loss=float(result.training_loss),
        steps=int(result.global_step),
        best_val_loss=min(eval_losses) if eval_losses else None,
        history=[
            {k: float(v) for k, v in e.items() if isinstance(v, (int, float))} for e in trainer.state.log_history
        ],
    )


def merge_adapter(base_dir: str, adapter_dir: Path, out_dir: Path) -> Path:
    """Fold the adapter into a full-precision base (never the 4-bit one: that would
    bake quantization error into the served weights)."""
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(out_dir)
    load_tokenizer(base_dir).save_pretrained(out_dir)
    return out_dir


def dataset_hash(pairs: list[QAPair]) -> str:
    payload = "\n".join(f"{p.question}\t{p.answer}" for p in pairs)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def train(
    data: QADataset, model_cfg: ModelConfig, cfg: TrainingConfig, prompt: PromptConfig
) -> TrainedModel:
    start = time.perf_counter()
    base_dir = resolve_base_model(model_cfg)
    data_hash = dataset_hash(data.train)
    replay = replay_sample(cfg.replay, len(data.train), cfg.seed) if cfg.replay else []
    # Keyed by everything that shapes the weights, so a rerun after a crash resumes
    # its own checkpoints and never another configuration's.
    key = hashlib.sha256(
        f"{base_dir}|{config_hash(cfg)}|{config_hash(prompt)}|{data_hash}".encode()
    ).hexdigest()[:16]
    work_dir = Path(cfg.output_dir).resolve() / key
    run_id = mlflow.active_run().info.run_id
    machine = Machine.detect()
    compute = training_compute(cfg, machine)
    print(f"Training {cfg.method} on {compute}; {machine.threads} torch threads on {machine.cores} cores")
    mlflow.log_params(
        {
            "compute.device": compute.device.value,
            "compute.precision": compute.precision.value,
            "compute.reason": compute.reason,
            "compute.cpu_capability": machine.cpu_capability,
            "compute.gpu": machine.gpu or "none",
            "compute.torch_threads": machine.threads,
            **{f"training.{k}": v for k, v in cfg.model_dump(mode="json").items() if k != "replay"},
            "training.replay": f"{len(replay)} from {cfg.replay.path}" if cfg.replay else "none",
            "training.config_hash": config_hash(cfg),
            "model.base": base_dir,
            "data.train_pairs": len(data.train),
            "data.val_pairs": len(data.val),
            "data.test_pairs": len(data.test),
            "data.train_hash": data_hash,
        }
    )
    mlflow.log_dict(cfg.model_dump(mode="json"), "training/config.json")
    monitor = SystemMetricsMonitor(run_id, sampling_interval=5)
    monitor.start()
    try:
        result = fit(
            sft_dataset(data.train, prompt.system_prompt, replay),
            sft_dataset(data.val, prompt.system_prompt) if data.val else None,
            base_dir,
            cfg,
            work_dir,
            compute,
        )
    finally:
        monitor.finish()
    if cfg.method == "full":  # the trainer saved the model with its tokenizer
        merged_dir, adapter_dir = result.model_dir, None
    else:
        merged_dir, adapter_dir = merge_adapter(base_dir, result.model_dir, work_dir / "merged"), result.model_dir
        mlflow.log_artifacts(str(adapter_dir), "adapter")
    model_uri = log_qa_model(str(merged_dir), prompt.system_prompt)
    seconds = time.perf_counter() - start
    mlflow.log_metrics(
        {"train/final_loss": result.train_loss, "train/seconds": seconds, "train/peak_memory_mb": peak_memory_mb()}
        | ({"val/best_loss": result.best_val_loss} if result.best_val_loss is not None else {})
    )
    return TrainedModel(
        method=cfg.method,
        base_model_dir=base_dir,
        adapter_dir=str(adapter_dir) if adapter_dir else None,
        merged_dir=str(merged_dir),
        model_uri=model_uri,
        mlflow_run_id=run_id,
        train_loss=result.train_loss,
        steps=result.steps,
        seconds=seconds,
        best_val_loss=result.best_val_loss,
        history=result.history,
    )


@step(experiment_tracker=True)
def train_step(
    data: QADataset, model: ModelConfig, training: TrainingConfig, prompt: PromptConfig
) -> TrainedModel:
    return train(data, model, training, prompt)
