"""The evaluate step: the candidate (by its MLflow URI), the base model and the current
production version, closed book and with retrieval, on every question set, through
qaforge.evaluation, with the report written and logged."""

from __future__ import annotations

from pathlib import Path

import mlflow
from zenml import get_step_context, step

from qaforge.config import EvaluationConfig, ModelConfig, PromptConfig, RegistryConfig, RetrievalConfig
from qaforge.evaluation import ModelRef, evaluate, question_sets, systems
from qaforge.evaluation.report import comparisons_text, metrics_text, write_report
from qaforge.hardware import Machine, decide
from qaforge.modeling import resolve_base_model
from qaforge.records import EvalReport, QADataset, Resampling, TrainedModel
from qaforge.registry import production_model
from qaforge.retrieval import Retriever


def log_report(report: EvalReport, report_dir: Path) -> None:
    """Metrics of the gate's question set as eval/<system>/<metric> (as before there
    were several sets), the others' as eval/<set>/<system>/<metric>."""
    for r in (report, *report.other_sets):
        where = "eval" if r is report else f"eval/{r.question_set}"
        for label, values in r.metrics.items():
            mlflow.log_metrics({f"{where}/{label}/{name}": value for name, value in values.items()})
        if r.retrieval_recall is not None:
            mlflow.log_metric(f"{where}/retrieval_recall", r.retrieval_recall)
        for c in r.comparisons:
            prefix = f"{where}/gain_over_{c.b}/{c.metric}" + (
                "_by_document" if c.resampled == Resampling.DOCUMENTS else "")
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
    index: Retriever,
    model: ModelConfig,
    prompt: PromptConfig,
    retrieval: RetrievalConfig,
    evaluation: EvaluationConfig,
    registry: RegistryConfig,
) -> EvalReport:
    compute = decide(Machine.detect(), evaluation.device, evaluation.precision)
    mlflow.log_params({"evaluation.compute": str(compute), "evaluation.quantization": evaluation.quantization.value,
                       "evaluation.retrieval_top_k": retrieval.top_k, "evaluation.served_with_retrieval": retrieval.serve})
    chosen, gated, baseline = systems(
        # A logged model never changes: once it is production, its answers are reused.
        ModelRef(trained.model_uri, identity=trained.model_uri),
        ModelRef(base := resolve_base_model(model), identity=base),
        production_model(registry, trained),
        retrieval.serve,
        evaluation.compare_modes,
    )
    report = evaluate(chosen, question_sets(data, evaluation), prompt, evaluation, gated=gated, baseline=baseline,
                      retriever=index, top_k=retrieval.top_k, cache_dir=evaluation.cache_dir)
    run_name = get_step_context().pipeline_run.name
    out_dir = Path(evaluation.report_dir).resolve() / run_name
    paths = write_report(
        report, trained, out_dir, title=run_name, primary_metric=evaluation.primary_metric,
        examples=evaluation.examples_in_report,
    )
    log_report(report, out_dir)
    print(metrics_text(report.metrics))
    print(comparisons_text(report, evaluation.primary_metric))
    if report.reused:
        print(f"Answers reused from the cache for: {', '.join(report.reused)}")
    print(f"Report: {paths['html']}")
    return report
