"""The register step: qaforge.registry.register, linked to this run's ZenML model version."""

from __future__ import annotations

from zenml import get_step_context, log_metadata, step

from qaforge.config import RegistryConfig
from qaforge.records import RegisteredModel, TrainedModel
from qaforge.registry import register


@step(experiment_tracker=True)
def register_step(
    trained: TrainedModel, registry: RegistryConfig, sources_fingerprint: str, config_digest: str
) -> RegisteredModel:
    registered = register(trained, registry, get_step_context().pipeline_run.name, sources_fingerprint, config_digest)
    log_metadata(
        {"mlflow_model": registered.name, "mlflow_version": registered.version},
        infer_model=True,
    )
    return registered
