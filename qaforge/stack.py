"""Idempotent set-up of the ZenML repository and a qaforge stack: the default
orchestrator and artifact store + an MLflow experiment tracker and model registry,
either on ZenML's local MLflow store or on a team's MLflow tracking server."""

from __future__ import annotations

import os
from pathlib import Path

from zenml.client import Client
from zenml.enums import StackComponentType

from qaforge.tracking import StackError, remember_stack

TRACKER = "mlflow_tracker"
REGISTRY = "mlflow_registry"
# Tracker setting -> the variable MLflow itself reads it from.
CREDENTIALS = {
    "tracking_username": "MLFLOW_TRACKING_USERNAME",
    "tracking_password": "MLFLOW_TRACKING_PASSWORD",
    "tracking_token": "MLFLOW_TRACKING_TOKEN",
}


def _ensure_component(client: Client, kind: StackComponentType, name: str, flavor: str,
                      configuration: dict[str, str]) -> None:
    try:
        component = client.get_stack_component(kind, name)
    except KeyError:
        client.create_stack_component(name=name, flavor=flavor, component_type=kind, configuration=configuration)
        return
    if configuration and any(component.configuration.get(k) != v for k, v in configuration.items()):
        client.update_stack_component(name, kind, configuration=configuration)


def _credentials(client: Client, secret: str) -> dict[str, str]:
    """MLflow's own variables for a server's credentials, kept as a ZenML secret that
    the tracker refers to, so the stack's configuration holds no password."""
    found = {key: os.environ[var] for key, var in CREDENTIALS.items() if os.environ.get(var)}
    if set(found) not in ({"tracking_username", "tracking_password"}, {"tracking_token"}):
        raise StackError(
            "a tracking server needs credentials: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, "
            "or MLFLOW_TRACKING_TOKEN (only one of the two)"
        )
    try:
        existing = client.get_secret(secret)
    except KeyError:
        client.create_secret(secret, values=found)
    else:  # switched from a password to a token, say: the other one goes
        client.update_secret(secret, add_or_update_values=found,
                             remove_values=[k for k in existing.secret_values if k not in found])
    return {key: f"{{{{{secret}.{key}}}}}" for key in found}


def setup_stack(name: str = "qaforge", root: Path | None = None, tracking_uri: str | None = None) -> str:
    """With `tracking_uri`, the tracker and the registry use that MLflow server, with
    the credentials in MLflow's variables (see `_credentials`)."""
    root = root or Path.cwd()
    if Client.find_repository(root) is None:
        Client.initialize(root)
    client = Client()
    # The registry reads the tracking URI off the stack's tracker: the two always agree.
    suffix = f"_{name}" if tracking_uri else ""
    tracker, registry = TRACKER + suffix, REGISTRY + suffix
    _ensure_component(client, StackComponentType.EXPERIMENT_TRACKER, tracker, "mlflow",
                      {"tracking_uri": tracking_uri, **_credentials(client, f"{name}-mlflow")} if tracking_uri else {})
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
    remember_stack(client, name)
    return name
