"""Pipeline logs a person can read: library loggers at WARNING unless asked for more,
so progress bars and qaforge's own lines are not drowned."""

from __future__ import annotations

import logging

# docling logs three INFO lines per converted document; the others chat at INFO too.
LIBRARIES = (
    "docling", "docling_core", "docling_parse", "crawl4ai", "httpx", "datasets", "urllib3",
    "mlflow.store", "mlflow.system_metrics",
)
ZENML_MLFLOW_TRACKER = "zenml.integrations.mlflow.experiment_trackers.mlflow_experiment_tracker"


class RemovedFlavorWarning(logging.Filter):
    """ZenML 0.98's MLflow tracker disables autologging after every step for a fixed list
    of frameworks that still names fastai, whose MLflow flavor MLflow 3 removed: the
    import fails and it warns "Failed to disable MLflow autologging ... ['fastai']".
    There is no fastai autologging to disable, so only that exact warning is dropped;
    a failure for any other framework still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().endswith("following frameworks: ['fastai'].")


def quiet_libraries(verbose: bool = False) -> None:
    """Library loggers at WARNING (or back to their defaults when `verbose`)."""
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)
    tracker = logging.getLogger(ZENML_MLFLOW_TRACKER)
    for existing in [f for f in tracker.filters if isinstance(f, RemovedFlavorWarning)]:
        tracker.removeFilter(existing)
    if not verbose:
        tracker.addFilter(RemovedFlavorWarning())
