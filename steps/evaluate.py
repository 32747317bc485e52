"""The evaluate step: the candidate (by its MLflow URI), the base model and the current
production version through qaforge.evaluation, with the report written and logged."""

from __future__ import annotations

from pathlib import Path

import mlflow
from zenml import get_step_context, step

from qaforge.config import EvaluationConfig, ModelConfig, PromptConfig, RegistryConfig
from qaforge.evaluation import ModelRef, evaluate, test_pairs
from qaforge.evaluation.report import comparisons_text, metrics_text, write_report
from qaforge.hardware import Machine, decide
from qaforge.modeling import resolve_base_model
from qaforge.records import EvalReport, ModelLabel, QADataset, Resampling, TrainedModel
from qaforge.registry import production_model


def log_report(report: EvalReport, report_dir: Path) -> None:
    for label, values in report.metrics.items():
        mlflow.log_metrics({f"eval/{label}/{name}": value for name, value in values.items()})
    for c in report.comparisons:
        prefix = f"eval/gain_over_{c.b}/{c.metric}" + ("_by_document" if c.resampled == Resampling.DOCUMENTS else "")
        mlflow.log_metrics({prefix: c.gain, f"{prefix}_low": c.low, f"{prefix}_high": c.high})
    for name, rows in (("answers", report.rows), ("general", report.general)):
        if rows:
            table: dict[str, list[str]] = {
                "question": [r.question for r in rows],
                "reference": [r.reference for r in rows],
                "source": [r.source for r in rows],
            }
            for label in report.metrics:
                table[label] = [r.answers[label] for r in rows]
            mlflow.log_table(data=table, artifact_file=f"eval/{name}.json")
    mlflow.log_dict(report.model_dump(mode="json"), "eval/report.json")
    mlflow.log_artifacts(str(report_dir), "report")


@step(experiment_tracker=True)
def evaluate_step(
    data: QADataset,
    trained: TrainedModel,
    model: ModelConfig,
    prompt: PromptConfig,
    evaluation: EvaluationConfig,
    registry: RegistryConfig,
) -> EvalReport:
    compute = decide(Machine.detect(), evaluation.device, evaluation.precision)
    mlflow.log_params({"evaluation.compute": str(compute), "evaluation.quantization": evaluation.quantization.value})
    models = {
        # A logged model never changes: once it is production, its answers are reused.
        ModelLabel.CANDIDATE: ModelRef(trained.model_uri, identity=trained.model_uri),
        ModelLabel.BASE: ModelRef(base := resolve_base_model(model), identity=base),
    }
    if (production := production_model(registry, trained)) is not None:
        models[ModelLabel.PRODUCTION] = production
    report = evaluate(models, test_pairs(data, evaluation), prompt, evaluation, evaluation.cache_dir)
    run_name = get_step_context().pipeline_run.name
    out_dir = Path(evaluation.report_dir).resolve() / run_name
    paths = write_report(
        report, trained, out_dir, title=run_name, primary_metric=evaluation.primary_metric,
        examples=evaluation.examples_in_report,
    )
    log_report(report, out_dir)
    print(metrics_text(report.metrics))
    print(comparisons_text(report))
    if report.reused:
        print(f"Answers reused from the cache for: {', '.join(report.reused)}")
    print(f"Report: {paths['html']}")
    return report
