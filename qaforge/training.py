"""Training: QLoRA, LoRA or full SFT with trl, loss on the answer tokens only, val loss
every N steps with early stopping, optional replay of general data, optionally with
retrieved passages in the prompt (RAFT); a LoRA adapter
is then merged into a full-precision copy of the base model. Metrics go to the active
MLflow run when there is one."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import resource
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import mlflow
import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, EarlyStoppingCallback, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint
from trl import SFTConfig, SFTTrainer
from trl.trainer import utils as trl_utils

from qaforge.config import (
    ContextTraining,
    Method,
    ModelConfig,
    PromptConfig,
    ReplayConfig,
    TrainingConfig,
    config_hash,
)
from qaforge.fsutil import write_atomic
from qaforge.general_data import ReplayExample, read_jsonl
from qaforge.hardware import (
    Compute,
    Device,
    Machine,
    Precision,
    Quantization,
    decide_training,
    quantization_config,
)
from qaforge.modeling import load_tokenizer, resolve_base_model
from qaforge.prompting import build_messages, fit_template, retrieval_query, takes_system_role
from qaforge.records import Passage, QADataset, QAPair, Turn
from qaforge.retrieval import Retriever

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    """One training conversation as `build_messages` renders it, and the answer taught."""

    question: str
    answer: str
    history: tuple[Turn, ...] = ()
    context: tuple[Passage, ...] = ()
    source_id: str = ""  # the chunk the answer came from, if any


def examples(pairs: list[QAPair], replay: Sequence[ReplayExample] = ()) -> list[Example]:
    return [Example(p.question, p.answer, tuple(p.history), source_id=p.chunk_id) for p in pairs] + [
        Example(r.question, r.answer) for r in replay
    ]


def with_passages(found: list[Example], retriever: Retriever, top_k: int, cfg: ContextTraining,
                  seed: int) -> list[Example]:
    """RAFT's training examples: each question with `top_k` retrieved passages, as it
    will be served. With probability `with_source` they are the chunk its answer came
    from, at a random place, among the best-matching other chunks (distractors);
    otherwise distractors only, and the answer is the pair's own (to be recalled) or
    the configured refusal. Replay and unanswerable questions get distractors only and
    keep their answers, so the model learns to ignore passages that do not help."""
    rng = random.Random(seed)
    queries = [retrieval_query([*(t.question for t in e.history), e.question]) for e in found]
    distractors = retriever.search_many(queries, top_k, exclude=[e.source_id for e in found])
    result = []
    for example, others in zip(found, distractors):
        source = retriever.by_id.get(example.source_id)
        if source is not None and rng.random() < cfg.with_source:
            context = others[: top_k - 1]
            context.insert(rng.randrange(len(context) + 1), source)
            answer = example.answer
        else:
            context = others[:top_k]
            answer = example.answer if source is None else cfg.without_source_answer or example.answer
        result.append(replace(example, answer=answer, context=tuple(context)))
    return result


def sft_rows(found: list[Example], system_prompt: str | None) -> list[dict[str, Any]]:
    """Conversational prompt/completion rows: trl masks the prompt out of the loss."""
    return [
        {
            "prompt": build_messages(e.question, system_prompt, e.history, e.context),
            "completion": [{"role": "assistant", "content": e.answer}],
        }
        for e in found
    ]


def as_template_takes(rows: Dataset, tokenizer: Any) -> Dataset:
    """Rows whose prompts the tokenizer's template can render (`fit_template`), as the
    server renders its prompts."""
    if takes_system_role(tokenizer):
        return rows
    return rows.map(lambda row: {"prompt": fit_template(tokenizer, row["prompt"])})


def sft_dataset(found: list[Example], system_prompt: str | None) -> Dataset:
    return Dataset.from_list(sft_rows(found, system_prompt))


def check_lengths(rows: list[dict[str, Any]], tokenizer: Any, max_length: int, split: str) -> int:
    """The longest example's length in tokens, as trl tokenizes it (the whole
    conversation through the chat template). trl cuts longer examples from the end,
    which cuts their answers, and silently drops those left with none: an example
    over `max_length` is an error that names it and the length it needs."""
    longest = 0
    for i, row in enumerate(rows):
        conversation = fit_template(tokenizer, row["prompt"]) + row["completion"]
        length = len(tokenizer.apply_chat_template(conversation, tokenize=True)["input_ids"])
        if length > max_length:
            question = row["prompt"][-1]["content"].rpartition("Question: ")[2]
            raise ValueError(
                f"{split} example {i} ({question[:80]!r}) is {length} tokens with its system prompt, earlier turns "
                f"and passages, over training.max_length={max_length}: trl would cut its answer. Raise "
                f"training.max_length to at least {length}, or give it fewer or shorter passages "
                "(retrieval.top_k, chunking.max_tokens)"
            )
        longest = max(longest, length)
    return longest


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
    if method in (Method.LORA, Method.FULL):
        return AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    # Always a fresh instance: on some CPUs a 4-bit model that ran any inference before
    # training has its weights repacked by bitsandbytes and then gets wrong LoRA gradients.
    return AutoModelForCausalLM.from_pretrained(
        base_dir,
        quantization_config=quantization_config(Quantization.NF4, compute),
        **({"device_map": {"": 0}} if compute.device is Device.CUDA else {}),
    )


def train_top_layers(model: Any, n: int) -> None:
    """Freeze all but the top `n` decoder layers and the final norm. Nothing below the
    lowest trained layer needs a gradient, so backward stops there."""
    decoder = model.get_decoder()
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise ValueError(f"training.trainable_layers needs a decoder with a `layers` list (Llama, Qwen, Mistral, "
                         f"Gemma ...); {type(decoder).__name__} has none: remove trainable_layers")
    if n > len(layers):
        raise ValueError(f"training.trainable_layers is {n}, but the base model has {len(layers)} decoder layers")
    model.requires_grad_(False)
    for module in [*layers[len(layers) - n:], getattr(decoder, "norm", None)]:
        if module is not None:
            module.requires_grad_(True)


def project_answer_tokens_only() -> None:
    """Make trl's fused LM head project only the positions that have a label, on the CPU
    too. trl does so where its Triton kernels run (CUDA, XPU) and elsewhere projects every
    position, to keep tile shapes fixed for ahead-of-time compilers (XLA). On a CPU that
    compiles nothing it only costs: a RAFT row is ~340 tokens of which ~30 are the
    answer, and the 49k-word projection of the other ~310, forward and backward, was
    half of each step's time (bench/RESULTS.md). The loss is the same either way."""
    triton_device = trl_utils._use_triton
    if getattr(triton_device, "answers_only", False):
        return

    def compact(device: torch.device) -> bool:
        return device.type == "cpu" or triton_device(device)

    compact.answers_only = True  # type: ignore[attr-defined]
    trl_utils._use_triton = compact


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

    def on_log(self, args, state, control, logs=None, **kwargs):
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
    reused: bool = False  # a finished run of the same plan, not trained again

    def save(self, path: Path) -> None:
        write_atomic(path, json.dumps({k: v for k, v in asdict(self).items() if k not in ("model_dir", "reused")}))

    @classmethod
    def load(cls, path: Path, model_dir: Path) -> FitResult:
        return cls(model_dir=model_dir, reused=True, **json.loads(path.read_text()))


RESULT_FILE = "result.json"


def mean_logged_loss(history: list[dict[str, float]]) -> float:
    """The average of the training losses the trainer logged, over the whole run: after a
    resume the trainer's own average covers only the steps it ran in this session."""
    losses = [e["loss"] for e in history if "loss" in e]
    return sum(losses) / len(losses) if losses else float("nan")


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
    """SFT with trl; resumes from the last checkpoint in `work_dir` if there is one, and
    returns a finished run's result without training again."""
    model_dir = work_dir / ("model" if cfg.method is Method.FULL else "adapter")
    if (work_dir / RESULT_FILE).exists() and model_dir.is_dir():
        log.info("training already finished in %s; reusing its model", work_dir)
        return FitResult.load(work_dir / RESULT_FILE, model_dir)
    compute = compute or training_compute(cfg)
    evaluate = cfg.eval_steps is not None and val_set is not None and len(val_set) > 0
    checkpoints = work_dir / "checkpoints"
    args = sft_config(cfg, checkpoints, evaluate, compute)
    callbacks: list[TrainerCallback] = [MlflowStepMetrics()]
    if args.load_best_model_at_end and cfg.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    project_answer_tokens_only()
    model = load_trainable_model(base_dir, cfg.method, compute)
    if cfg.trainable_layers is not None:
        train_top_layers(model, cfg.trainable_layers)
    tokenizer = load_tokenizer(base_dir)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=as_template_takes(train_set, tokenizer),
        eval_dataset=as_template_takes(val_set, tokenizer) if evaluate and val_set is not None else None,
        processing_class=tokenizer,
        peft_config=None
        if cfg.method is Method.FULL
        else LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        ),
        callbacks=callbacks,
    )
    checkpoint = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if checkpoint:
        log.info("resuming training from %s", checkpoint)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(str(model_dir))
    history = [{k: float(v) for k, v in e.items() if isinstance(v, (int, float))} for e in trainer.state.log_history]
    eval_losses = [e["eval_loss"] for e in history if "eval_loss" in e]
    fitted = FitResult(
        model_dir=model_dir,
        train_loss=mean_logged_loss(history) if checkpoint else float(result.training_loss),
        steps=int(result.global_step),
        best_val_loss=min(eval_losses) if eval_losses else None,
        history=history,
    )
    fitted.save(work_dir / RESULT_FILE)
    # Checkpoints only serve to resume an interrupted run; a full fine-tune's two with
    # optimizer state are ~3 GB the finished run would otherwise keep for ever.
    shutil.rmtree(checkpoints, ignore_errors=True)
    return fitted


def merge_adapter(base_dir: str, adapter_dir: Path, out_dir: Path) -> Path:
    """Fold the adapter into a full-precision base (never the 4-bit one: that would
    bake quantization error into the served weights)."""
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(out_dir)
    load_tokenizer(base_dir).save_pretrained(out_dir)
    return out_dir


def dataset_hash(found: list[Example]) -> str:
    """Identifies the training data: earlier turns of follow-ups and passages included."""
    payload = "\n".join(
        json.dumps([[(t.question, t.answer) for t in e.history], [p.chunk_id for p in e.context], e.question,
                    e.answer])
        for e in found
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class TrainingPlan:
    """What a training run will do, known before it starts."""

    method: Method
    base_dir: str
    work_dir: Path
    compute: Compute
    machine: Machine
    data_hash: str
    replay: int


@dataclass
class TrainingRun:
    plan: TrainingPlan
    fit: FitResult
    model_dir: Path  # the full model: merged for LoRA and QLoRA
    adapter_dir: Path | None
    seconds: float


def plan_training(train_examples: list[Example], model_cfg: ModelConfig, cfg: TrainingConfig, prompt: PromptConfig,
                  replay: int = 0) -> TrainingPlan:
    base_dir = resolve_base_model(model_cfg)
    data_hash = dataset_hash(train_examples)
    # Keyed by everything that shapes the weights, so a rerun after a crash resumes
    # its own checkpoints and never another configuration's.
    key = hashlib.sha256(
        f"{base_dir}|{config_hash(cfg)}|{config_hash(prompt)}|{data_hash}".encode()
    ).hexdigest()[:16]
    machine = Machine.detect()
    return TrainingPlan(cfg.method, base_dir, Path(cfg.output_dir).resolve() / key, training_compute(cfg, machine),
                        machine, data_hash, replay)


def train(
    data: QADataset,
    model_cfg: ModelConfig,
    cfg: TrainingConfig,
    prompt: PromptConfig,
    on_start: Callable[[TrainingPlan], None] = lambda plan: None,
    retriever: Retriever | None = None,
    top_k: int = 0,
) -> TrainingRun:
    """Fine-tune the base model on the train split (val loss on the val split) and
    return the full model's folder; `on_start` sees the plan before training starts.
    With `cfg.context`, the questions come with `top_k` passages from `retriever`."""
    start = time.perf_counter()
    replay = replay_sample(cfg.replay, len(data.train), cfg.seed) if cfg.replay else []
    train_examples, val_examples = examples(data.train, replay), examples(data.val)
    if cfg.context is not None:
        if retriever is None or top_k < 1:
            raise ValueError("training.context needs a retrieval index and top_k")
        train_examples = with_passages(train_examples, retriever, top_k, cfg.context, cfg.seed)
        val_examples = with_passages(val_examples, retriever, top_k, cfg.context, cfg.seed)
    plan = plan_training(train_examples, model_cfg, cfg, prompt, len(replay))
    train_rows, val_rows = sft_rows(train_examples, prompt.system_prompt), sft_rows(val_examples, prompt.system_prompt)
    tokenizer = load_tokenizer(plan.base_dir)
    longest = max(check_lengths(train_rows, tokenizer, cfg.max_length, "training"),
                  check_lengths(val_rows, tokenizer, cfg.max_length, "validation"))
    print(f"Training {cfg.method} on {plan.compute}; {plan.machine.threads} torch threads on "
          f"{plan.machine.cores} cores" + (f"; {top_k} passages per question" if cfg.context else "")
          + f"; longest example {longest} of {cfg.max_length} tokens")
    on_start(plan)
    result = fit(
        Dataset.from_list(train_rows),
        Dataset.from_list(val_rows) if val_rows else None,
        plan.base_dir,
        cfg,
        plan.work_dir,
        plan.compute,
    )
    if result.reused:
        print(f"Training had already finished in {plan.work_dir}: its model is reused (train loss "
              f"{result.train_loss:.4f}, {result.steps} steps)")
    if cfg.method is Method.FULL:  # the trainer saved the model with its tokenizer
        model_dir, adapter_dir = result.model_dir, None
    else:
        model_dir = merge_adapter(plan.base_dir, result.model_dir, plan.work_dir / "merged")
        adapter_dir = result.model_dir
    return TrainingRun(plan, result, model_dir, adapter_dir, time.perf_counter() - start)
