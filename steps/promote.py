"""The promote step: the gate's decision over the evaluation report (which scored the
candidate, the base and the current production version together), then the alias
moves, the ZenML stage and the decision logged to MLflow."""

from __future__ import annotations

import mlflow
from zenml import get_step_context, step
from zenml.enums import ModelStages

from qaforge.config import EvaluationConfig, RegistryConfig
from qaforge.promotion import gate
from qaforge.records import EvalReport, PromotionDecision, RegisteredModel
from qaforge.registry import move_aliases


@step(experiment_tracker=True)
def promote_step(
    report: EvalReport, registered: RegisteredModel, evaluation: EvaluationConfig, registry: RegistryConfig
) -> PromotionDecision:
    decision = gate(report, registered.version, evaluation.primary_metric, registry)
    move_aliases(decision, registered, registry)
    if decision.promoted and (zenml_model := get_step_context().model) is not None:
        zenml_model.set_stage(ModelStages.PRODUCTION, force=True)
    mlflow.log_dict(decision.model_dump(mode="json"), "promotion/decision.json")
    mlflow.set_tags({"promotion.promoted": decision.promoted, "promotion.reason": decision.reason[:5000],
                     "promotion.question_set": decision.question_set or "none"})
    if decision.versus_production is not None:
        mlflow.log_metrics(
            {
                f"promotion/production_{decision.metric}": decision.versus_production.value_b,
                "promotion/gain_over_production_low": decision.versus_production.low,
            }
        )
    verdict = f"PROMOTED to @{registry.alias}" if decision.promoted else "NOT promoted"
    print(f"{registered.name} v{registered.version} {verdict}: {decision.reason}")
    return decision
