"""Idempotent set-up of the ZenML repository and the qaforge stack:
local orchestrator and artifact store + MLflow experiment tracker and model registry."""

from __future__ import annotations

from pathlib import Path

from zenml.client import Client
from zenml.enums import StackComponentType

TRACKER = "mlflow_tracker"
REGISTRY = "mlflow_registry"


def _ensure_component(client: Client, kind: StackComponentType, name: str, flavor: str) -> None:
    try:
        client.get_stack_component(kind, name)
    except KeyError:
        client.create_stack_component(name=name, flavor=flavor, component_type=kind, configuration={})


def setup_stack(name: str = "qaforge", root: Path | None = None) -> str:
    root = root or Path.cwd()
    if Client.find_repository(root) is None:
        Client.initialize(root)
    client = Client()
    _ensure_component(client, StackComponentType.EXPERIMENT_TRACKER, TRACKER, "mlflow")
    _ensure_component(client, StackComponentType.MODEL_REGISTRY, REGISTRY, "mlflow")
    try:
        client.get_stack(name)
    except KeyError:
        client.create_stack(
            name=name,
            components={
                StackComponentType.ORCHESTRATOR: "default",
                StackComponentType.ARTIFACT_STORE: "default",
                StackComponentType.EXPERIMENT_TRACKER: TRACKER,
                StackComponentType.MODEL_REGISTRY: REGISTRY,
            },
        )
    client.activate_stack(name)
    return name
