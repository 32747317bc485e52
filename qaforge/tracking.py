"""Access to the MLflow model registry of the active ZenML stack."""

from __future__ import annotations

from typing import Any


class StackError(RuntimeError):
    """The active ZenML stack lacks a component qaforge needs."""


class RegistryError(RuntimeError):
    """The model registry answered with an error (other than "no such model or alias"):
    whatever needed its answer stops, since it cannot tell what is in production."""


def model_registry() -> Any:
    from zenml.client import Client

    stack = Client().active_stack
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
    from zenml.client import Client

    tracker = Client().active_stack.experiment_tracker
    if tracker is None or not hasattr(tracker, "get_tracking_uri"):
        raise StackError("the active ZenML stack has no MLflow experiment tracker; run `qaforge setup`")
    return tracker.get_tracking_uri()
