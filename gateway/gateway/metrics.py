"""The gateway's own Prometheus metrics (the shared HTTP and upstream ones: `modelgate_core.metrics`)."""

from __future__ import annotations

from prometheus_client import Counter

# Labels are bounded: `model` and `version` are only ever names the model directory knows, never
# whatever a client put in the URL; key names are never labels here.
MODEL_REQUESTS = Counter(
    "modelgate_model_requests_total",
    "Requests to a model through the gateway's model routes, by model, version and status.",
    ["model", "version", "status"],
)

# One counter for every Redis client of the gateway (keys, rate limits, response cache): the alert on the
# key store needs the failures themselves, while each client's own counter says what it did about them.
REDIS_ERRORS = Counter(
    "modelgate_redis_errors_total",
    "Redis commands that failed (after the one reconnect on a dead connection).",
)
