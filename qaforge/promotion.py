"""The promotion gate: a pure decision over the evaluation report, importable and
testable without torch, ZenML or MLflow (qaforge.registry moves the aliases it decides on)."""

from __future__ import annotations

from qaforge.config import RegistryConfig
from qaforge.records import EvalReport, Interval, ModelLabel, ModelsUri, PromotionDecision


def gate(report: EvalReport, version: str, metric: str, cfg: RegistryConfig) -> PromotionDecision:
    """Promote only if the candidate, as served, beats the base model asked the same way
    and the production version as it is served, on `metric` by more than the margin
    (lower bound of the interval), on the question set the evaluation says can decide,
    and passes the forgetting guard. When no set can decide, nothing is promoted."""
    scores = report.decided_on
    if scores is None:
        return PromotionDecision(promoted=False, reason=report.gate_note, metric=metric, version=version)
    versus_base = scores.gain(metric, report.baseline)
    if versus_base is None:
        raise ValueError(f"the evaluation report has no {metric} comparison with the base model on {scores.name}")
    production = ModelsUri.parse(report.models.get(ModelLabel.PRODUCTION, ""))
    return decide_promotion(
        versus_base,
        scores.gain(metric, ModelLabel.PRODUCTION),
        cfg.min_improvement,
        version,
        production.version if production else None,
        report.general_drop(),
        cfg.max_general_drop,
        question_set=scores.name,
    )


def decide_promotion(
    versus_base: Interval,
    versus_production: Interval | None,
    margin: float,
    version: str,
    production_version: str | None = None,
    general_drop: float | None = None,
    max_general_drop: float | None = None,
    question_set: str = "test",
) -> PromotionDecision:
    """The gate. Each reason names the numbers it was decided on."""
    metric, ci = versus_base.metric, f"{round(100 * versus_base.confidence)}% CI"
    candidate, base = versus_base.value_a, versus_base.value_b
    units = f" over {versus_base.clusters} {versus_base.resampled}" if versus_base.clusters else ""
    failures = []
    if versus_base.low <= margin:
        failures.append(
            f"gain over base {versus_base.gain:+.4f} ({ci}{units} [{versus_base.low:+.4f}, {versus_base.high:+.4f}]) "
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
    summary += f" on the {question_set} set"
    if failures:
        reason = f"{summary}: " + "; ".join(failures)
    else:
        reason = f"{summary}: gain over base {ci}{units} [{versus_base.low:+.4f}, {versus_base.high:+.4f}]"
        if versus_production is not None:
            reason += f", over production [{versus_production.low:+.4f}, {versus_production.high:+.4f}]"
        reason += f" above {margin}"
        if general_drop is not None:
            reason += f"; general-QA accuracy change {-general_drop:+.4f}"
    return PromotionDecision(
        promoted=not failures,
        reason=reason,
        metric=metric,
        question_set=question_set,
        candidate=candidate,
        base=base,
        production=versus_production.value_b if versus_production else None,
        production_version=production_version,
        version=version,
        versus_base=versus_base,
        versus_production=versus_production,
        general_drop=general_drop,
    )
