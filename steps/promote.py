"""Promote: move the `production` alias to the candidate only if, on the primary
metric, the lower bound of the paired bootstrap confidence interval of its gain over
the base model and over the current production model (re-scored on this run's test
split) exceeds the margin, and it passes the forgetting guard. The previous
production version keeps the `previous` alias, so `qaforge rollback` can restore it."""

from __future__ import annotations

import logging

import mlflow
from zenml import get_step_context, step
from zenml.enums import ModelStages

from qaforge.config import EvaluationConfig, PromptConfig, RegistryConfig
from qaforge.metrics import paired_bootstrap, score_answers
from qaforge.mlflow_model import inference_options
from qaforge.modeling import generate_answers
from qaforge.records import EvalReport, Interval, PromotionDecision, QADataset, RegisteredModel
from qaforge.tracking import model_registry, version_by_alias
from steps.evaluate import as_served, test_pairs

log = logging.getLogger(__name__)


def decide(
    versus_base: Interval,
    versus_production: Interval | None,
    margin: float,
    version: str,
    production_version: str | None = None,
    general_drop: float | None = None,
    max_general_drop: float | None = None,
) -> PromotionDecision:
    """The gate. Each reason names the numbers it was decided on."""
    metric, ci = versus_base.metric, f"{round(100 * versus_base.confidence)}% CI"
    candidate, base = versus_base.value_a, versus_base.value_b
    failures = []
    if versus_base.low <= margin:
        failures.append(
            f"gain over base {versus_base.gain:+.4f} ({ci} [{versus_base.low:+.4f}, {versus_base.high:+.4f}]) "
            f"has a lower bound not above {margin}"
        )
    if versus_production is not None and versus_production.low <= margin:
        failures.append(
            f"gain over production v{production_version} {versus_production.gain:+.4f} "
            f"({ci} [{versus_production.low:+.4f}, {versus_production.high:+.4f}]) "
            f"has a lower bound not above {margin}"
        )
    if general_drop is not None and max_general_drop is not None and general_drop > max_general_drop:
        failures.append(f"general-QA accuracy dropped by {general_drop:.4f}, more than {max_general_drop}")
    summary = f"{metric} {candidate:.4f} vs base {base:.4f}"
    if versus_production is not None:
        summary += f" and production v{production_version} {versus_production.value_b:.4f}"
    if failures:
        reason = f"{summary}: " + "; ".join(failures)
    else:
        reason = f"{summary}: gain over base {ci} [{versus_base.low:+.4f}, {versus_base.high:+.4f}]"
        if versus_production is not None:
            reason += f", over production [{versus_production.low:+.4f}, {versus_production.high:+.4f}]"
        reason += f" above {margin}"
        if general_drop is not None:
            reason += f"; general-QA accuracy change {-general_drop:+.4f}"
    return PromotionDecision(
        promoted=not failures,
        reason=reason,
        metric=metric,
        candidate=candidate,
        base=base,
        production=versus_production.value_b if versus_production else None,
        production_version=production_version,
        version=version,
        versus_base=versus_base,
        versus_production=versus_production,
        general_drop=general_drop,
    )


def versus_production(
    report: EvalReport,
    registered: RegisteredModel,
    alias: str,
    data: QADataset,
    prompt: PromptConfig,
    cfg: EvaluationConfig,
) -> tuple[str, Interval] | None:
    """The candidate's gain over the current production version, re-scored on this
    run's test split; None when there is none, or it is the candidate itself (a rerun)."""
    current = version_by_alias(registered.name, alias)
    if current is None or str(current.version) == registered.version:
        return None
    served = mlflow.pyfunc.load_model(
        f"models:/{registered.name}@{alias}", model_config=inference_options(cfg)
    ).unwrap_python_model()
    # Only the answers: the gate's metrics are all answer scores.
    pairs = test_pairs(data, cfg)
    generation = generate_answers(
        served.model, served.tokenizer, as_served(pairs, prompt), cfg.max_new_tokens, cfg.batch_size
    )
    production = score_answers(generation.answers, [p.answer for p in pairs])
    candidate = score_answers([r.answers["candidate"] for r in report.rows], [r.reference for r in report.rows])
    metric = cfg.primary_metric
    interval = paired_bootstrap(
        metric,
        lambda idx: candidate.value(metric, idx),
        lambda idx: production.value(metric, idx),
        len(report.rows),
        ("candidate", f"production v{current.version}"),
        cfg.bootstrap_samples,
        cfg.confidence,
    )
    return str(current.version), interval


def gain_over_base(report: EvalReport, metric: str) -> Interval:
    return next(c for c in report.comparisons if c.metric == metric)


def general_drop(report: EvalReport) -> float | None:
    if "general_accuracy" not in report.metrics["base"]:
        return None
    return report.metrics["base"]["general_accuracy"] - report.metrics["candidate"]["general_accuracy"]


def promote(
    report: EvalReport,
    registered: RegisteredModel,
    data: QADataset,
    prompt: PromptConfig,
    evaluation: EvaluationConfig,
    cfg: RegistryConfig,
) -> PromotionDecision:
    production = versus_production(report, registered, cfg.alias, data, prompt, evaluation)
    decision = decide(
        gain_over_base(report, evaluation.primary_metric),
        production[1] if production else None,
        cfg.min_improvement,
        registered.version,
        production[0] if production else None,
        general_drop(report),
        cfg.max_general_drop,
    )
    if decision.promoted:
        client = model_registry().mlflow_client
        if production:
            client.set_registered_model_alias(registered.name, cfg.previous_alias, production[0])
        client.set_registered_model_alias(registered.name, cfg.alias, registered.version)
    return decision


def rollback(name: str, alias: str, previous_alias: str) -> tuple[str, str]:
    """Swap `alias` and `previous_alias`: the previous version serves again, and the one
    rolled back from becomes `previous` (so a second rollback undoes the first).
    Returns (version now at alias, version now at previous_alias)."""
    previous = version_by_alias(name, previous_alias)
    if previous is None:
        raise LookupError(f"model '{name}' has no version with alias @{previous_alias} to roll back to")
    current = version_by_alias(name, alias)
    client = model_registry().mlflow_client
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

    for version in Client().list_model_versions(model=model, size=1000):
        if str(version.run_metadata.get("mlflow_version")) == mlflow_version:
            version.set_stage(ModelStages.PRODUCTION, force=True)
            return version.name
    return None


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
    mlflow.log_dict(decision.model_dump(mode="json"), "promotion/decision.json")
    mlflow.set_tags({"promotion.promoted": decision.promoted, "promotion.reason": decision.reason[:5000]})
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
