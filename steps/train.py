"""The train step: qaforge.training inside the step's MLflow run, with its plan,
system metrics and per-step losses logged, and the model logged as an MLflow model:
later steps get it by URI, never by a local path."""

from __future__ import annotations

import mlflow
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from zenml import step

from qaforge.config import ModelConfig, PromptConfig, RetrievalConfig, TrainingConfig, config_hash
from qaforge.mlflow_model import log_qa_model
from qaforge.records import QADataset, TrainedModel
from qaforge.retrieval import Retriever
from qaforge.training import TrainingPlan, peak_memory_mb, train


def log_plan(plan: TrainingPlan, data: QADataset, cfg: TrainingConfig) -> None:
    mlflow.log_params(
        {
            "compute.device": plan.compute.device.value,
            "compute.precision": plan.compute.precision.value,
            "compute.reason": plan.compute.reason,
            "compute.cpu_capability": plan.machine.cpu_capability,
            "compute.gpu": plan.machine.gpu or "none",
            "compute.torch_threads": plan.machine.threads,
            **{f"training.{k}": v for k, v in cfg.model_dump(mode="json").items() if k not in ("replay", "context")},
            "training.replay": f"{plan.replay} from {cfg.replay.path}" if cfg.replay else "none",
            "training.context": cfg.context.model_dump_json() if cfg.context else "none",
            "training.config_hash": config_hash(cfg),
            "model.base": plan.base_dir,
            "data.train_pairs": len(data.train),
            "data.val_pairs": len(data.val),
            "data.test_pairs": len(data.test),
            "data.train_hash": plan.data_hash,
        }
    )
    mlflow.log_dict(cfg.model_dump(mode="json"), "training/config.json")


@step(experiment_tracker=True)
def train_step(
    data: QADataset, index: Retriever, model: ModelConfig, training: TrainingConfig, prompt: PromptConfig,
    retrieval: RetrievalConfig,
) -> TrainedModel:
    run_id = mlflow.active_run().info.run_id
    monitor = SystemMetricsMonitor(run_id, sampling_interval=5)
    monitor.start()
    try:
        run = train(data, model, training, prompt, on_start=lambda plan: log_plan(plan, data, training),
                    retriever=index, top_k=retrieval.top_k)
    finally:
        monitor.finish()
    if run.adapter_dir is not None:
        mlflow.log_artifacts(str(run.adapter_dir), "adapter")
    mlflow.log_metrics(
        {"train/final_loss": run.fit.train_loss, "train/seconds": run.seconds, "train/peak_memory_mb": peak_memory_mb()}
        | ({"val/best_loss": run.fit.best_val_loss} if run.fit.best_val_loss is not None else {})
    )
    return TrainedModel(
        method=training.method,
        base_model=model.name_or_path,
        # The index goes with the model, so that wherever it is served it retrieves what it was evaluated with.
        model_uri=log_qa_model(str(run.model_dir), prompt.system_prompt, index,
                               retrieval.top_k if retrieval.serve else 0),
        adapter_uri=f"runs:/{run_id}/adapter" if run.adapter_dir is not None else None,
        mlflow_run_id=run_id,
        train_loss=run.fit.train_loss,
        steps=run.fit.steps,
        seconds=run.seconds,
        best_val_loss=run.fit.best_val_loss,
        history=run.fit.history,
    )
