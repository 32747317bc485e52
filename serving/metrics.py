"""Prometheus metrics of the API, in a registry of its own (one per app)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "qaforge_requests", "HTTP requests by route and status code.", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "qaforge_request_duration_seconds",
            "Time to the full response, by route.",
            ["route"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.errors = Counter("qaforge_errors", "Error responses by status code.", ["status"], registry=self.registry)
        self.key_requests = Counter("qaforge_key_requests", "Requests per API key.", ["key"], registry=self.registry)
        self.prompt_tokens = Counter("qaforge_prompt_tokens", "Prompt tokens per API key.", ["key"], registry=self.registry)
        self.completion_tokens = Counter(
            "qaforge_completion_tokens", "Generated tokens per API key.", ["key"], registry=self.registry
        )
        self.batch_size = Histogram(
            "qaforge_batch_size", "Requests in flight per generation step.", buckets=(1, 2, 4, 8, 16, 32),
            registry=self.registry,
        )
        self.cancelled = Counter(
            "qaforge_cancelled_requests", "Generations stopped or skipped because the client disconnected.", registry=self.registry
        )
        self.model = Gauge("qaforge_model_info", "The model version served (1).", ["model", "version"], registry=self.registry)

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)
        if status >= 400:
            self.errors.labels(status=str(status)).inc()

    def serving(self, name: str, version: str | None) -> None:
        self.model.clear()
        self.model.labels(model=name, version=version or "local").set(1)
