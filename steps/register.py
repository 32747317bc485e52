"""Register: the merged model, as logged by its training run, becomes a new MLflow
model version, linked to the ZenML model version of this pipeline run."""

from __future__ import annotations

from zenml import get_step_context, log_metadata, step
from zenml.model_registries.base_model_registry import ModelRegistryModelMetadata

from qaforge.config import RegistryConfig
from qaforge.records import RegisteredModel, TrainedModel
from qaforge.tracking import model_registry


def register(trained: TrainedModel, cfg: RegistryConfig, run_name: str | None = None) -> RegisteredModel:
    version = model_registry().register_model_version(
        name=cfg.model_name,
        model_source_uri=trained.model_uri,
        description=f"{trained.method} fine-tune, {trained.steps} steps, train loss {trained.train_loss:.4f}",
        metadata=ModelRegistryModelMetadata(
            zenml_run_name=run_name, mlflow_run_id=trained.mlflow_run_id
        ),
    )
    return RegisteredModel(
        name=cfg.model_name,
        version=str(version.version),
        model_uri=f"models:/{cfg.model_name}/{version.version}",
    )


@step(experiment_tracker=True)
def register_step(trained: TrainedModel, registry: RegistryConfig) -> RegisteredModel:
    registered = register(trained, registry, get_step_context().pipeline_run.name)
    log_metadata(
        {"mlflow_model": registered.name, "mlflow_version": registered.version},
        infer_model=True,
    )
    return registered
