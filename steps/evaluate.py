"""The evaluate step: the candidate (by its MLflow URI), the base model and the current
production version (as it is served: its own system prompt, top_k and index), closed
book and with retrieval, on every question set, through qaforge.evaluation, with the
report written and logged."""

from __future__ import annotations

import time
from pathlib import Path

import mlflow
from zenml import get_step_context, step

from qaforge.config import EvaluationConfig, ModelConfig, PromptConfig, RegistryConfig, RetrievalConfig
from qaforge.evaluation import AnswerCache, ModelRef, System, evaluate, question_sets, systems
from qaforge.evaluation.report import comparisons_text, metrics_text, write_report
from qaforge.hardware import Machine, decide
from qaforge.modeling import resolve_base_model
from qaforge.records import EvalMetric, EvalReport, QADataset, TrainedModel
from qaforge.registry import production_model
from qaforge.retrieval import Retriever
from qaforge.served import Answering, logged_answering


def report_metrics(report: EvalReport) -> dict[str, float]:
    """Every number as eval/<scope>/<system>/<metric> (EvalMetric)."""
    metrics: dict[str, float] = {}
    for scores in report.sets.values():
        for label, values in scores.metrics.items():
            metrics |= {str(EvalMetric(scores.name, label, name)): value for name, value in values.items()}
        if scores.retrieval_recall is not None:
            metrics[str(EvalMetric(scores.name, "retrieval", "recall"))] = scores.retrieval_recall
        for c in scores.comparisons:
            metrics |= EvalMetric.gains(scores.name, c)
    if report.guard is not None:
        metrics |= {str(EvalMetric("guard", label, "general_accuracy")): value
                    for label, value in report.guard.accuracy.items()}
        for c in report.guard.comparisons:
            metrics |= EvalMetric.gains("guard", c)
    for label, values in report.speed.items():
        metrics |= {str(EvalMetric("speed", label, name)): value for name, value in values.items()}
    return metrics


def log_report(report: EvalReport, report_dir: Path) -> None:
    """The numbers (in one request: a tracking server takes hundreds at once), the
    answers side by side, the report record and the rendered report."""
    mlflow.log_metrics(report_metrics(report))
    shown = report.decided_on or next(iter(report.sets.values()))
    for name, rows in (("answers", shown.rows), ("general", report.guard.rows if report.guard else [])):
        if rows:
            table: dict[str, list[str]] = {
                "question": [r.question for r in rows],
                "reference": [r.reference for r in rows],
                "source": [r.source for r in rows],
            }
            for label in rows[0].answers:
                table[label] = [r.answers[label] for r in rows]
            mlflow.log_table(data=table, artifact_file=f"eval/{name}.json")
    mlflow.log_dict(report.model_dump(mode="json"), "eval/report.json")
    mlflow.set_tag("eval.gate_set", report.gate_set or "none")
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
    production = production_model(registry, trained)
    chosen, gated, baseline = systems(
        # A logged model never changes: once it is production, its answers are reused.
        ModelRef(trained.model_uri, identity=trained.model_uri),
        ModelRef(base := resolve_base_model(model), identity=base),
        System(production, logged_answering(production.location)) if production else None,
        closed=Answering(prompt.system_prompt),
        retrieving=Answering(prompt.system_prompt, index, retrieval.top_k),
        serve_retrieval=retrieval.serve,
        compare_modes=evaluation.compare_modes,
    )
    start = time.perf_counter()
    report = evaluate(chosen, question_sets(data, evaluation), evaluation, gated=gated, baseline=baseline,
                      gate_on=evaluation.gate_on, cache=AnswerCache(evaluation.cache_dir))
    answered = time.perf_counter() - start
    run_name = get_step_context().pipeline_run.name
    out_dir = Path(evaluation.report_dir).resolve() / run_name
    paths = write_report(
        report, trained, out_dir, title=run_name, primary_metric=evaluation.primary_metric,
        examples=evaluation.examples_in_report,
    )
    log_report(report, out_dir)
    print(f"Evaluation: {answered:.1f} s to answer and score, {time.perf_counter() - start - answered:.1f} s to "
          "write and log the report; seconds per question set and system:")
    print(metrics_text(report.seconds, corner="system"))
    shown = report.decided_on or next(iter(report.sets.values()))
    print(f"Metrics on the {shown.name} set:")
    print(metrics_text(shown.metrics))
    print(comparisons_text(report, evaluation.primary_metric))
    if report.reused:
        print(f"Answers reused from the cache for: {', '.join(report.reused)}")
    print(f"Report: {paths['html']}")
    return report
