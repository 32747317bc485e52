"""The model registry's I/O: register a trained model as an MLflow model version, find
production and the newest version, move the aliases the gate (qaforge.promotion)
decided on, roll back, and the ZenML model stage. MLflow and ZenML are imported where
they are used, so `qaforge sources-changed`, `info` and `rollback` start quickly."""

from __future__ import annotations

from typing import Any

from qaforge.config import RegistryConfig
from qaforge.records import ModelRef, ModelsUri, PromotionDecision, RegisteredModel, TrainedModel
from qaforge.tracking import RegistryError, registry_client, version_by_alias, version_by_alias_from

# Version tags: what a version was trained from, for `qaforge sources-changed`.
SOURCES_TAG = "sources_fingerprint"
CONFIG_TAG = "config_digest"


def register(trained: TrainedModel, cfg: RegistryConfig, run_name: str | None = None,
             sources_fingerprint: str = "", config_digest: str = "") -> RegisteredModel:
    from mlflow.exceptions import MlflowException

    client = registry_client()
    try:
        client.create_registered_model(cfg.model_name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    # An MLflow 3 logged model (models:/<model id>) is registered with its id: a tracking
    # server refuses the bare source (a local store accepts it), so ZenML's
    # register_model_version, which passes no id, fails against one.
    version = client.create_model_version(
        name=cfg.model_name,
        source=trained.model_uri,
        run_id=trained.mlflow_run_id,
        description=f"{trained.method} fine-tune, {trained.steps} steps, train loss {trained.train_loss:.4f}",
        tags={"zenml_run_name": run_name or "", SOURCES_TAG: sources_fingerprint, CONFIG_TAG: config_digest},
        model_id=trained.model_uri.removeprefix("models:/") if trained.model_uri.startswith("models:/m-") else None,
    )
    return RegisteredModel(
        name=cfg.model_name,
        version=str(version.version),
        model_uri=f"models:/{cfg.model_name}/{version.version}",
    )


def production_model(cfg: RegistryConfig, trained: TrainedModel, client: Any = None) -> ModelRef | None:
    """The version now at the production alias, to be evaluated with the candidate;
    None when there is none, or it is this very model (a rerun of the same training).
    A registry that answers with an error stops here (RegistryError): a gate that
    cannot see production must not compare with the base alone. `client`: the active
    stack's registry unless given."""
    current = version_by_alias_from(client or registry_client(), cfg.model_name, cfg.alias)
    if current is None or current.run_id == trained.mlflow_run_id:
        return None
    # Registered from its training run's logged model, whose answers may be cached.
    return ModelRef(str(ModelsUri(cfg.model_name, version=str(current.version))), identity=current.source)


def latest_version(name: str) -> Any | None:
    """The newest MLflow version of model `name`, promoted or not; None if there is none."""
    versions = registry_client().search_model_versions(f"name = '{name}'")
    return max(versions, key=lambda v: int(v.version), default=None)


def what_changed(name: str, sources_fingerprint: str, config_digest: str) -> list[str]:
    """Why a retrain could give something new since the newest version of `name`: its
    sources or its config differ, or there is no version to compare with. Empty: nothing
    changed. Compared with the tracking server, so any machine gets the same answer."""
    latest = latest_version(name)
    if latest is None:
        return [f"no version of '{name}' is registered yet"]
    reasons = []
    if latest.tags.get(SOURCES_TAG) != sources_fingerprint:
        reasons.append(f"the sources differ from those v{latest.version} was trained on")
    if latest.tags.get(CONFIG_TAG) != config_digest:
        reasons.append(f"the config differs from the one v{latest.version} was trained with")
    return reasons


def move_aliases(decision: PromotionDecision, registered: RegisteredModel, cfg: RegistryConfig,
                 client: Any = None) -> None:
    """Move the aliases a promotion decided on; the replaced version keeps `previous`.
    Production must still be the version the candidate was compared with: if another
    run moved it since, or the registry cannot say, nothing moves (RegistryError)."""
    if not decision.promoted:
        return
    client = client or registry_client()
    current = version_by_alias_from(client, registered.name, cfg.alias)
    now = str(current.version) if current is not None else None
    if now not in (decision.production_version, registered.version):
        compared = f"v{decision.production_version}" if decision.production_version else "no production version"
        raise RegistryError(
            f"@{cfg.alias} of '{registered.name}' moved to v{now} since the evaluation compared the candidate with "
            f"{compared}; nothing was promoted: run the pipeline again to compare with it"
        )
    if decision.production_version:
        client.set_registered_model_alias(registered.name, cfg.previous_alias, decision.production_version)
    client.set_registered_model_alias(registered.name, cfg.alias, registered.version)


def rollback(name: str, alias: str, previous_alias: str) -> tuple[str, str]:
    """Swap `alias` and `previous_alias`: the previous version serves again, and the one
    rolled back from becomes `previous` (so a second rollback undoes the first).
    Returns (version now at alias, version now at previous_alias)."""
    previous = version_by_alias(name, previous_alias)
    if previous is None:
        raise LookupError(f"model '{name}' has no version with alias @{previous_alias} to roll back to")
    current = version_by_alias(name, alias)
    client = registry_client()
    client.set_registered_model_alias(name, alias, previous.version)
    if current is not None:
        client.set_registered_model_alias(name, previous_alias, current.version)
    else:
        client.delete_registered_model_alias(name, previous_alias)
    return str(previous.version), str(current.version) if current else ""


def set_zenml_stage(model: str, mlflow_version: str) -> str | None:
    """Move the ZenML model version that registered `mlflow_version` to the production
    stage, as promotion does; returns its name, or None if no version did."""
    from zenml.client import Client
    from zenml.enums import ModelStages

    for version in Client().list_model_versions(model=model, size=1000):
        if str(version.run_metadata.get("mlflow_version")) == mlflow_version:
            version.set_stage(ModelStages.PRODUCTION, force=True)
            return version.name
    return None
