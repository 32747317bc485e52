"""The ingest step: qaforge.ingest, with its report logged to MLflow."""

from __future__ import annotations

from typing import Annotated

import mlflow
from zenml import step

from qaforge.config import SourcesConfig
from qaforge.ingest import ingest
from qaforge.records import Corpus, ImportedPairs, IngestReport
from qaforge.sources.qa_files import read_qa_sources


def log_ingest_report(report: IngestReport) -> None:
    mlflow.log_dict(report.model_dump(mode="json"), "ingest/report.json")
    mlflow.log_metrics(
        {
            "ingest/documents": report.documents,
            "ingest/duplicates": len(report.duplicates),
            **{f"ingest/changes/{k}": v for k, v in report.changes.counts().items()},
            **{f"ingest/failures/{k}": v for k, v in report.failure_counts().items()},
        }
    )
    if report.failures:
        mlflow.log_table(
            data={
                "source": [f.source for f in report.failures],
                "kind": [f.kind for f in report.failures],
                "reason": [f.reason for f in report.failures],
                "status": [f.status for f in report.failures],
            },
            artifact_file="ingest/failures.json",
        )


# Never cached: it re-fetches every run, and hands downstream steps an identical
# Corpus when nothing changed, so they come from ZenML's cache all the same.
@step(enable_cache=False, experiment_tracker=True)
def ingest_step(
    sources: SourcesConfig,
) -> tuple[
    Annotated[Corpus, "corpus"], Annotated[ImportedPairs, "imported_pairs"], Annotated[IngestReport, "ingest_report"],
    Annotated[str, "sources_fingerprint"],
]:
    imported = ImportedPairs(pairs=read_qa_sources(sources.qa))  # before the crawl: a bad line fails fast
    corpus, report = ingest(sources)
    log_ingest_report(report)
    if sources.qa:
        mlflow.log_metric("ingest/imported_pairs", len(imported.pairs))
    return corpus, imported, report, report.fingerprint
