"""Access to the MLflow model registry of the active ZenML stack."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from qaforge.fsutil import write_atomic

log = logging.getLogger(__name__)
# In the checkout's .zen folder: ZenML store URL -> the stack `qaforge setup` made in it.
STACKS_FILE = "qaforge-stacks.json"


class StackError(RuntimeError):
    """The active ZenML stack lacks a component qaforge needs."""


class RegistryError(RuntimeError):
    """The model registry answered with an error (other than "no such model or alias"):
    whatever needed its answer stops, since it cannot tell what is in production."""


def _stacks_file(root: Path) -> Path:
    return root / ".zen" / STACKS_FILE


def _set_up_stacks(root: Path | None) -> dict[str, str]:
    path = _stacks_file(root) if root else None
    return json.loads(path.read_text()) if path and path.exists() else {}


def remember_stack(client: Any, name: str) -> None:
    """Record that `name` is this checkout's qaforge stack in the client's store."""
    if client.root is None:
        return
    stacks = _set_up_stacks(client.root) | {client.zen_store.url: name}
    write_atomic(_stacks_file(client.root), json.dumps(stacks, indent=2) + "\n")


def active_stack() -> Any:
    """The active ZenML stack, once it has an MLflow experiment tracker and model registry.

    ZenML keeps one active stack per checkout, not per store: any ZenML command run
    here against another store (another ZENML_CONFIG_PATH, a `zenml login` and back)
    resets it to `default`. Then the stack `qaforge setup` made for the store in use is
    activated again, with a warning that says so; without one, the error names the store."""
    from zenml.client import Client
    from zenml.enums import StackComponentType

    client = Client()
    current = client.active_stack_model
    needed = (StackComponentType.EXPERIMENT_TRACKER, StackComponentType.MODEL_REGISTRY)
    if all(current.components.get(kind) for kind in needed):
        return client.active_stack
    store = client.zen_store.url
    wanted = _set_up_stacks(client.root).get(store)
    if wanted is None:
        raise StackError(f"the active ZenML stack '{current.name}' has no MLflow experiment tracker and model "
                         f"registry, and `qaforge setup` has not made a stack in the ZenML store {store} from "
                         "this checkout; run `qaforge setup`")
    try:
        client.activate_stack(wanted)
    except KeyError as exc:
        raise StackError(f"the stack '{wanted}' that `qaforge setup` made in the ZenML store {store} is gone; "
                         "run `qaforge setup`") from exc
    log.warning("activated the ZenML stack '%s' that `qaforge setup` made in the store %s: this checkout's active "
                "stack had become '%s' (ZenML does that when the checkout is used with another store)",
                wanted, store, current.name)
    return client.active_stack


def model_registry() -> Any:
    stack = active_stack()
    if stack.model_registry is None:
        raise StackError(
            f"the active ZenML stack '{stack.name}' has no model registry; run `qaforge setup`"
        )
    return stack.model_registry


def registry_client() -> Any:
    return model_registry().mlflow_client


def version_by_alias_from(client: Any, name: str, alias: str) -> Any | None:
    """The MLflow model version holding `alias`; None only when the model or the alias
    does not exist. Any other failure (a 403, a 500 after MLflow's retries, a server
    that cannot be reached) raises RegistryError: a gate that cannot see production
    must not decide as if there were none."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise RegistryError(f"cannot read model '{name}' from the model registry: {exc.message}") from exc
    version = model.aliases.get(alias)
    if version is None:
        return None
    try:
        return client.get_model_version(name, version)
    except MlflowException as exc:
        raise RegistryError(f"cannot read {name} v{version} (@{alias}) from the model registry: {exc.message}"
                            ) from exc


def version_by_alias(name: str, alias: str) -> Any | None:
    """`version_by_alias_from` the active stack's registry."""
    return version_by_alias_from(registry_client(), name, alias)


def tracking_uri() -> str:
    tracker = active_stack().experiment_tracker
    if tracker is None or not hasattr(tracker, "get_tracking_uri"):
        raise StackError("the active ZenML stack has no MLflow experiment tracker; run `qaforge setup`")
    return tracker.get_tracking_uri()
