"""Access to the MLflow model registry of the active ZenML stack."""

from __future__ import annotations

from typing import Any


class StackError(RuntimeError):
    """The active ZenML stack lacks a component qaforge needs."""


def model_registry() -> Any:
    from zenml.client import Client

    stack = Client().active_stack
    if stack.model_registry is None:
        raise StackError(
            f"the active ZenML stack '{stack.name}' has no model registry; run `qaforge setup`"
        )
    return stack.model_registry


def version_by_alias(name: str, alias: str) -> Any | None:
    """The MLflow model version holding `alias`, or None if no version has it yet."""
    from mlflow.exceptions import MlflowException

    try:
        return model_registry().mlflow_client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def tracking_uri() -> str:
    from zenml.client import Client

    tracker = Client().active_stack.experiment_tracker
    if tracker is None or not hasattr(tracker, "get_tracking_uri"):
        raise StackError("the active ZenML stack has no MLflow experiment tracker; run `qaforge setup`")
    return tracker.get_tracking_uri()
