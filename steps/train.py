"""Train: QLoRA or LoRA SFT with trl, loss on the answer tokens only, then merge
the adapter into a full-precision copy of the base model and log it to MLflow."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import mlflow
import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint
from trl import SFTConfig, SFTTrainer
from zenml import step

from qaforge.config import ModelConfig, PromptConfig, TrainingConfig, config_hash
from qaforge.mlflow_model import log_qa_model
from qaforge.modeling import load_tokenizer, resolve_base_model
from qaforge.prompting import build_messages
from qaforge.records import QADataset, QAPair, TrainedModel

log = logging.getLogger(__name__)


def sft_dataset(pairs: list[QAPair], system_prompt: str | None) -> Dataset:
    """Conversational prompt/completion rows: trl masks the prompt out of the loss."""
    return Dataset.from_list(
        [
            {
                "prompt": build_messages(p.question, system_prompt, p.history),
                "completion": [{"role": "assistant", "content": p.answer}],
            }
            for p in pairs
        ]
    )


def load_trainable_model(base_dir: str, method: str) -> Any:
    if method == "lora":
        return AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    # Always a fresh instance: a 4-bit model that ran any inference before training
    # has its weights repacked by bitsandbytes and then gets wrong LoRA gradients.
    return AutoModelForCausalLM.from_pretrained(base_dir, quantization_config=quantization)


class MlflowStepMetrics(TrainerCallback):
    """Per-step training loss, learning rate and grad norm into the active MLflow run."""

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001, ANN201
        numeric = {
            f"train/{k}": float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float))
        }
        if numeric and mlflow.active_run():
            mlflow.log_metrics(numeric, step=state.global_step)


def train_adapter(
    dataset: Dataset, base_dir: str, cfg: TrainingConfig, work_dir: Path
) -> tuple[Path, float, int]:
    """Train a LoRA adapter; resume from the last checkpoint in `work_dir` if any."""
    bf16 = torch.cuda.is_bf16_supported() if torch.cuda.is_available() else True
    args = SFTConfig(
        output_dir=str(work_dir / "checkpoints"),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_steps,
        gradient_checkpointing=cfg.gradient_checkpointing,
        logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps,
        save_total_limit=2,
        max_length=cfg.max_length,
        seed=cfg.seed,
        bf16=bf16,
        use_cpu=not torch.cuda.is_available(),
        report_to="none",
    )
    trainer = SFTTrainer(
        model=load_trainable_model(base_dir, cfg.method),
        args=args,
        train_dataset=dataset,
        processing_class=load_tokenizer(base_dir),
        peft_config=LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        ),
        callbacks=[MlflowStepMetrics()],
    )
    checkpoint = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
    if checkpoint:
        log.info("resuming training from %s", checkpoint)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    adapter_dir = work_dir / "adapter"
    trainer.model.save_pretrained(adapter_dir)
    return adapter_dir, float(result.training_loss), int(result.global_step)


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
    # Keyed by everything that shapes the weights, so a rerun after a crash resumes
    # its own checkpoints and never another configuration's.
    key = hashlib.sha256(
        f"{base_dir}|{config_hash(cfg)}|{config_hash(prompt)}|{data_hash}".encode()
    ).hexdigest()[:16]
    work_dir = Path(cfg.output_dir).resolve() / key
    mlflow.log_params(
        {
            **{f"training.{k}": v for k, v in cfg.model_dump(mode="json").items()},
            "model.base": base_dir,
            "data.train_pairs": len(data.train),
            "data.val_pairs": len(data.val),
            "data.test_pairs": len(data.test),
            "data.train_hash": data_hash,
        }
    )
    adapter_dir, loss, steps = train_adapter(
        sft_dataset(data.train, prompt.system_prompt), base_dir, cfg, work_dir
    )
    merged_dir = merge_adapter(base_dir, adapter_dir, work_dir / "merged")
    model_uri = log_qa_model(str(merged_dir), prompt.system_prompt)
    seconds = time.perf_counter() - start
    mlflow.log_metrics({"train/final_loss": loss, "train/seconds": seconds})
    return TrainedModel(
        method=cfg.method,
        base_model_dir=base_dir,
        adapter_dir=str(adapter_dir),
        merged_dir=str(merged_dir),
        model_uri=model_uri,
        mlflow_run_id=mlflow.active_run().info.run_id,
        train_loss=loss,
        steps=steps,
        seconds=seconds,
    )


@step(experiment_tracker=True)
def train_step(
    data: QADataset, model: ModelConfig, training: TrainingConfig, prompt: PromptConfig
) -> TrainedModel:
    return train(data, model, training, prompt)
