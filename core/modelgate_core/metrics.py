"""Prometheus metrics shared by every process, correct under several Gunicorn workers.

When `PROMETHEUS_MULTIPROC_DIR` is set (our Gunicorn config sets it before workers start), each worker
writes its samples to files there and `/metrics` aggregates them, so a scrape sees the whole process
group rather than whichever worker answered.
"""

from __future__ import annotations

import os
from typing import Generic, TypeVar

from fastapi.telemetry import TelemetryConfig
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client import REGISTRY as DEFAULT_REGISTRY

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

HTTP_REQUESTS = Counter(
    "modelgate_http_requests_total",
    "HTTP requests handled, by route template and status.",
    ["service", "route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "modelgate_http_request_duration_seconds",
    "Time from first byte in to last byte out, by route template.",
    ["service", "route", "method"],
    buckets=_LATENCY_BUCKETS,
)
HTTP_IN_FLIGHT = Gauge(
    "modelgate_http_requests_in_flight",
    "Requests being handled right now.",
    ["service"],
    multiprocess_mode="livesum",
)
MODEL_INFERENCE = Histogram(
    "modelgate_model_inference_seconds",
    "Time spent in the model's predict step (one call, which may hold a batch).",
    ["model"],
    buckets=_LATENCY_BUCKETS,
)
MODEL_BATCH_SIZE = Histogram(
    "modelgate_model_batch_size",
    "Inputs per model call.",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000),
)
VERSION_REQUESTS = Counter(
    "modelgate_version_requests_total",
    "Requests a model version handled, by outcome: ok, client_error (4xx: the input), error (the rest).",
    ["model", "version", "outcome"],
)
VERSION_REQUEST_LATENCY = Histogram(
    "modelgate_version_request_duration_seconds",
    "Time one request spent in a model version (checks, queue, pre/postprocessing, the model call).",
    ["model", "version"],
    buckets=_LATENCY_BUCKETS,
)
MODEL_READY = Gauge(
    "modelgate_model_ready",
    "1 when the model is loaded in a live worker.",
    ["model"],
    multiprocess_mode="livemax",
)
UPSTREAM_LATENCY = Histogram(
    "modelgate_upstream_request_duration_seconds",
    "Gateway to model service round trips, by upstream and outcome.",
    ["upstream", "outcome"],
    buckets=_LATENCY_BUCKETS,
)


# FastAPI's built-in OpenTelemetry layer looks the global providers up (environment included) on every
# request, before it finds there is nothing to do; our metrics are the Prometheus ones here. Passed as
# `FastAPI(telemetry=...)` by every app.
FASTAPI_TELEMETRY_OFF: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}

Metric = TypeVar("Metric", Counter, Gauge, Histogram)

# Distinct label sets one `Children` keeps; past it, `labels()` is called as usual (correct, slower).
_CHILDREN_LIMIT = 4096


class Children(Generic[Metric]):
    """A labelled metric's children, kept by label values for the hot path: `labels()` converts,
    validates and takes a lock on every call. Label values must be bounded anyway (route templates,
    statuses, known model names), so is this."""

    def __init__(self, metric: Metric) -> None:
        self.metric: Metric = metric
        self._children: dict[tuple[str, ...], Metric] = {}

    def __call__(self, *values: str) -> Metric:
        child = self._children.get(values)
        if child is None:
            child = self.metric.labels(*values)
            if len(self._children) < _CHILDREN_LIMIT:
                self._children[values] = child
        return child


def render_metrics() -> tuple[bytes, str]:
    """Return the exposition text and its content type, aggregated over workers when multiprocess."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(DEFAULT_REGISTRY), CONTENT_TYPE_LATEST
