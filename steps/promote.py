"""Promote: move the `production` alias to the candidate only if it beats the base
model and the current production model on the primary metric, scored on this
run's test split; the previous production version keeps the `previous` alias."""

from __future__ import annotations

import logging

import mlflow
from zenml import get_step_context, step
from zenml.enums import ModelStages

from qaforge.config import EvaluationConfig, PromptConfig, RegistryConfig
from qaforge.records import EvalReport, PromotionDecision, QADataset, RegisteredModel
from qaforge.tracking import model_registry, version_by_alias
from steps.evaluate import answer_and_score, test_pairs

log = logging.getLogger(__name__)


def decide(
    metric: str,
    candidate: float,
    base: float,
    production: float | None,
    margin: float,
    version: str,
    production_version: str | None = None,
) -> PromotionDecision:
    """The gate: strictly better than base and production by more than `margin`."""
    promoted = False
    if candidate <= base + margin:
        reason = f"{metric} {candidate:.4f} does not beat base {base:.4f} by more than {margin}"
    elif production is not None and candidate <= production + margin:
        reason = (
            f"{metric} {candidate:.4f} does not beat production v{production_version} "
            f"{production:.4f} by more than {margin}"
        )
    else:
        promoted = True
        against = "" if production is None else f" and production v{production_version} {production:.4f}"
        reason = f"{metric} {candidate:.4f} beats base {base:.4f}{against}"
    return PromotionDecision(
        promoted=promoted,
        reason=reason,
        metric=metric,
        candidate=candidate,
        base=base,
        production=production,
        production_version=production_version,
        version=version,
    )


def production_score(
    registered: RegisteredModel,
    alias: str,
    data: QADataset,
    prompt: PromptConfig,
    cfg: EvaluationConfig,
) -> tuple[str, float] | None:
    """Score the current production version on this run's test split; None when there
    is none, or when it is the candidate itself (a rerun of this step)."""
    current = version_by_alias(registered.name, alias)
    if current is None or str(current.version) == registered.version:
        return None
    served = mlflow.pyfunc.load_model(f"models:/{registered.name}@{alias}").unwrap_python_model()
    _, metrics = answer_and_score(served.model, served.tokenizer, test_pairs(data, cfg), prompt, cfg)
    return str(current.version), metrics[cfg.primary_metric]


def promote(
    report: EvalReport,
    registered: RegisteredModel,
    data: QADataset,
    prompt: PromptConfig,
    evaluation: EvaluationConfig,
    cfg: RegistryConfig,
) -> PromotionDecision:
    metric = evaluation.primary_metric
    production = production_score(registered, cfg.alias, data, prompt, evaluation)
    decision = decide(
        metric,
        candidate=report.metrics["candidate"][metric],
        base=report.metrics["base"][metric],
        production=production[1] if production else None,
        margin=cfg.min_improvement,
        version=registered.version,
        production_version=production[0] if production else None,
    )
    if decision.promoted:
        client = model_registry().mlflow_client
        if production:
            client.set_registered_model_alias(registered.name, cfg.previous_alias, production[0])
        client.set_registered_model_alias(registered.name, cfg.alias, registered.version)
    return decision


@step(experiment_tracker=True)
def promote_step(
    report: EvalReport,
    registered: RegisteredModel,
    data: QADataset,
    prompt: PromptConfig,
    evaluation: EvaluationConfig,
    registry: RegistryConfig,
) -> PromotionDecision:
    decision = promote(report, registered, data, prompt, evaluation, registry)
    if decision.promoted and (zenml_model := get_step_context().model) is not None:
        zenml_model.set_stage(ModelStages.PRODUCTION, force=True)
    mlflow.log_dict(decision.model_dump(), "promotion/decision.json")
    mlflow.set_tags({"promotion.promoted": decision.promoted, "promotion.reason": decision.reason})
    if decision.production is not None:
        mlflow.log_metric(f"promotion/production_{decision.metric}", decision.production)
    verdict = f"PROMOTED to @{registry.alias}" if decision.promoted else "NOT promoted"
    print(f"{registered.name} v{registered.version} {verdict}: {decision.reason}")
    return decision
