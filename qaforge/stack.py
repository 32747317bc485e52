"""Idempotent set-up of the ZenML repository and a qaforge stack: the default
orchestrator and artifact store + an MLflow experiment tracker and model registry,
either on ZenML's local MLflow store or on a team's MLflow tracking server."""

from __future__ import annotations

from pathlib import Path

from zenml.client import Client
from zenml.enums import StackComponentType

TRACKER = "mlflow_tracker"
REGISTRY = "mlflow_registry"


def _ensure_component(client: Client, kind: StackComponentType, name: str, flavor: str,
                      configuration: dict[str, str]) -> None:
    try:
        component = client.get_stack_component(kind, name)
    except KeyError:
        client.create_stack_component(name=name, flavor=flavor, component_type=kind, configuration=configuration)
        return
    if configuration and any(component.configuration.get(k) != v for k, v in configuration.items()):
        client.update_stack_component(name, kind, configuration=configuration)


def setup_stack(name: str = "qaforge", root: Path | None = None, tracking_uri: str | None = None) -> str:
    """With `tracking_uri`, the tracker and the registry use that MLflow server; its
    credentials come from MLflow's own variables (MLFLOW_TRACKING_USERNAME and
    MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN), so none is stored in ZenML."""
    root = root or Path.cwd()
    if Client.find_repository(root) is None:
        Client.initialize(root)
    client = Client()
    # The registry reads the tracking URI off the stack's tracker: the two always agree.
    suffix = f"_{name}" if tracking_uri else ""
    tracker, registry = TRACKER + suffix, REGISTRY + suffix
    _ensure_component(client, StackComponentType.EXPERIMENT_TRACKER, tracker, "mlflow",
                      {"tracking_uri": tracking_uri} if tracking_uri else {})
    _ensure_component(client, StackComponentType.MODEL_REGISTRY, registry, "mlflow", {})
    mlflow = {StackComponentType.EXPERIMENT_TRACKER: tracker, StackComponentType.MODEL_REGISTRY: registry}
    try:
        stack = client.get_stack(name)
    except KeyError:
        client.create_stack(
            name=name,
            components={
                StackComponentType.ORCHESTRATOR: "default",
                StackComponentType.ARTIFACT_STORE: "default",
                **mlflow,
            },
        )
    else:  # a stack set up before with another tracking server, or none
        current = {kind: found[0].name for kind, found in stack.components.items()}
        if any(current.get(kind) != wanted for kind, wanted in mlflow.items()):
            client.update_stack(name, component_updates={kind: [wanted] for kind, wanted in mlflow.items()})
    client.activate_stack(name)
    return name
