"""OpenTelemetry traces, configured by the standard `OTEL_*` variables and off unless an endpoint is set.

On when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` is set (and neither
`OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none` says otherwise): each worker then has its own
SDK tracer provider (made in the app's lifespan, so after Gunicorn's fork, never in the master) with a
`BatchSpanProcessor` and the OTLP/HTTP exporter. Everything else is the SDK's own reading of the
environment: the sampler (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`; parent-based always-on by
default), the resource (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`; `service.name` falls back to
the process's `SERVICE_NAME`), the batch processor (`OTEL_BSP_*`), the exporter (`OTEL_EXPORTER_OTLP_*`:
headers, timeout, compression) and the propagators (`OTEL_PROPAGATORS`; W3C `traceparent` by default).

Off, nothing of the SDK is imported and no span object is made: `tracer` is None, and the hot path
pays one `if tracer is None` in the request middleware, and a call that returns the shared `_OFF`
context manager at each step. The spans are our own, thin ones (no generic ASGI instrumentation, which
costs even when it records nothing):

- every request but the health and metrics polls: a SERVER span `{method} {route}` (parent: the
  caller's `traceparent`), with its status code, request ID, and, on the gateway, the model, key and
  upstream of its access-log line. 5xx is an error. Its trace ID is the access log's `trace_id` and
  the answer's `X-Trace-ID` header, so a log line leads to its trace.
- the gateway's steps: `gateway.auth`, `gateway.rate_limit`, `gateway.cache`, and `gateway.upstream`
  (CLIENT; it sends `traceparent`, so the service's SERVER span is its child).
- a service's steps, with the model's name and version: `model.queue` (waiting for the model slot or
  for a batch), `model.preprocess`, `model.batch` (batched models), `model.predict` (with the rows of
  the call as `modelgate.batch.size`), `model.postprocess`.

A batch serves several requests, each in its own trace: each of them gets its own `model.batch` span
(same `modelgate.batch.id`, `modelgate.batch.size` in inputs and `modelgate.batch.requests`) with the
model call under it, so every trace is whole and the traces of one batch are found by its ID.

Steps are traced only inside a traced request: a model call of a background task or a probe outside
any request starts no trace of its own. A request the sampler drops (or whose caller's `traceparent`
says "not sampled") records nothing, but keeps its trace ID in its log lines and `X-Trace-ID`, and
passes "not sampled" on to the service.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry.trace import (
    Span,
    SpanKind,
    Status,
    StatusCode,
    Tracer,
    get_current_span,
    set_span_in_context,
)

from modelgate_core.context import RequestContext
from modelgate_core.errors import ModelGateError

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider

logger = logging.getLogger("modelgate.tracing")

TRACE_ID_HEADER = "x-trace-id"
_TRACE_ID_KEY = TRACE_ID_HEADER.encode()
_CARRIED = frozenset({b"traceparent", b"tracestate", b"baggage"})

# Attribute names (our own namespace where OpenTelemetry's semantic conventions have none).
MODEL_NAME = "modelgate.model.name"
MODEL_VERSION = "modelgate.model.version"
BATCH_SIZE = "modelgate.batch.size"
BATCH_REQUESTS = "modelgate.batch.requests"
BATCH_ID = "modelgate.batch.id"
REQUEST_ID = "modelgate.request_id"
ERROR_CODE = "modelgate.error.code"
# Access-log fields a gateway's SERVER span also carries (as `modelgate.<field>`).
_LOGGED_FIELDS = ("model", "key_name", "upstream", "upstream_status", "upstream_retries")

# What a request waiting for a batch leaves for the batch's spans: its trace context, when it began waiting.
Waiting = tuple["Context", int]

# Set by `setup` in a worker whose environment names an endpoint; None: tracing is off.
tracer: Tracer | None = None
_provider: TracerProvider | None = None


def configured(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment asks for traces: an OTLP endpoint set, the SDK not disabled."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    )


def setup(service_name: str) -> bool:
    """Start exporting this process's spans if the environment asks for it (see the module doc);
    True when tracing is on. Call it in each worker (the app's lifespan), never before a fork: the
    processor's thread and the exporter's connections are the process's own."""
    global tracer, _provider
    if _provider is not None:
        return True
    if not configured():
        return False
    # Empty counts as unset, as for every other setting (compose passes `VAR: ${VAR:-}`); the SDK
    # would read an empty OTEL_BSP_SCHEDULE_DELAY or OTEL_TRACES_SAMPLER as a bad value.
    for name in [k for k, v in os.environ.items() if k.startswith("OTEL_") and not v.strip()]:
        del os.environ[name]
    # Imported here: a process with tracing off never loads the SDK.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()  # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    provider = TracerProvider(resource=resource)  # the sampler from OTEL_TRACES_SAMPLER(_ARG)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # OTEL_BSP_*, OTEL_EXPORTER_*
    _provider = provider
    tracer = provider.get_tracer("modelgate")
    logger.info("tracing on", extra={"otel_service_name": resource.attributes.get(SERVICE_NAME)})
    return True


def shutdown() -> None:
    """Export what is still buffered and stop (the lifespan's end; a no-op when tracing is off)."""
    global tracer, _provider
    provider, _provider, tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()


def trace_id_of(span: Span) -> str:
    """The 32 hex digits of `span`'s trace ID."""
    return f"{span.get_span_context().trace_id:032x}"


class _Off:
    """The context manager of a step while tracing is off or outside a traced request: one shared
    instance, so a step costs no object then."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        return None


_OFF = _Off()


class _Step:
    """A span current for the duration of a `with` block (its children nest under it)."""

    __slots__ = ("span", "token")

    def __init__(self, span: Span) -> None:
        self.span = span
        self.token: object = None

    def __enter__(self) -> Span:
        self.token = otel_context.attach(set_span_in_context(self.span))
        return self.span

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None:
            mark_failure(self.span, exc)
        self.span.end()
        otel_context.detach(self.token)  # type: ignore[arg-type]  # attach's token


def step(
    name: str, attributes: Mapping[str, Any] | None = None
) -> contextlib.AbstractContextManager[Span | None]:
    """`with step("model.preprocess") as span:` times the block as a child of the current span; `span`
    is None (and nothing is made) when tracing is off or no traced request is current."""
    active = tracer
    if active is None or not get_current_span().get_span_context().is_valid:
        return _OFF
    return _Step(active.start_span(name, attributes=attributes))


def begin(name: str, attributes: Mapping[str, Any] | None = None) -> Span | None:
    """A child of the current span that `finish` ends, for a step that is not one block (a wait
    that ends inside `async with`); None when `step` would make nothing."""
    active = tracer
    if active is None or not get_current_span().get_span_context().is_valid:
        return None
    return active.start_span(name, attributes=attributes)


def finish(span: Span | None) -> None:
    """End a span of `begin` (None: nothing to end)."""
    if span is not None:
        span.end()


def mark_failure(span: Span, exc: BaseException) -> None:
    """Record why a step ended with `exc`: an answer we give on purpose below 500 (a 400, a 429) is
    an outcome, named by its code; anything else is an error."""
    if isinstance(exc, ModelGateError) and exc.status_code < 500:
        span.set_attribute(ERROR_CODE, exc.code)
        return
    if isinstance(exc, ModelGateError):
        span.set_attribute(ERROR_CODE, exc.code)
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


# --- SERVER spans (RequestContextMiddleware) ---


@dataclass(slots=True)
class ServerSpan:
    span: Span
    token: object
    method: str


def start_server_span(active: Tracer, scope: Mapping[str, Any], ctx: RequestContext) -> ServerSpan:
    """The SERVER span of a request (child of the caller's `traceparent`, if sent), made current; its
    trace ID goes to the request's context (access log) and the `X-Trace-ID` answer header."""
    carrier: dict[str, str] = {}
    for key, value in scope.get("headers", ()):
        if key in _CARRIED and key.decode() not in carrier:
            carrier[key.decode()] = value.decode("latin-1")
    parent = propagate.extract(carrier) if carrier else None
    method = str(scope["method"])
    span = active.start_span(
        method,  # renamed once the route is known
        context=parent,
        kind=SpanKind.SERVER,
        attributes={"http.request.method": method, "url.path": scope["path"], REQUEST_ID: ctx.request_id},
    )
    token = otel_context.attach(set_span_in_context(span, parent))
    ctx.trace_id = trace_id_of(span)
    ctx.response_headers.append((_TRACE_ID_KEY, ctx.trace_id.encode()))
    return ServerSpan(span, token, method)


def end_server_span(
    server: ServerSpan, status: int, route: str | None, fields: Mapping[str, Any], error: BaseException | None
) -> None:
    """Name the span by its route, record the answer's status (5xx: an error) and end it."""
    span = server.span
    if span.is_recording():
        if route:
            span.update_name(f"{server.method} {route}")
            span.set_attribute("http.route", route)
        span.set_attribute("http.response.status_code", status)
        for name in _LOGGED_FIELDS:
            value = fields.get(name)
            if value is not None:
                span.set_attribute(f"modelgate.{name}", value)
        if error is not None:
            span.record_exception(error)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))
    span.end()
    otel_context.detach(server.token)  # type: ignore[arg-type]  # attach's token


# --- the gateway's CLIENT span of an upstream call ---


def start_client_span(service: str, method: str, path: str, headers: dict[str, str]) -> Span | None:
    """A CLIENT span for a call to `service`, its context put in `headers` (`traceparent`) so that
    the service's span is its child; None outside a traced request (readiness probes, for one).
    Also made for an unsampled request, so that the service hears "not sampled" too."""
    active = tracer
    if active is None or not get_current_span().get_span_context().is_valid:
        return None
    span = active.start_span(
        "gateway.upstream",
        kind=SpanKind.CLIENT,
        attributes={"http.request.method": method, "url.path": path, "modelgate.upstream": service},
    )
    propagate.inject(headers, context=set_span_in_context(span))
    return span


def end_client_span(span: Span, outcome: str, retries: int, error: BaseException | None) -> None:
    """Record the call's outcome (the service's status, or the transport error) and end the span."""
    if span.is_recording():
        span.set_attribute("modelgate.upstream.retries", retries)
        if outcome.isdigit():
            span.set_attribute("http.response.status_code", int(outcome))
        else:
            span.set_attribute("error.type", outcome)
        if error is not None:
            mark_failure(span, error)
        elif not outcome.isdigit() or int(outcome) >= 500:
            span.set_status(Status(StatusCode.ERROR, f"upstream {outcome}"))
    span.end()


# --- batches: one model call for several requests, each in its own trace ---


def capture() -> Waiting | None:
    """What a request that joins a batch leaves for the batch's spans: its trace context and when it
    began waiting; None when tracing is off or no traced request is current."""
    if tracer is None or not get_current_span().get_span_context().is_valid:
        return None
    return otel_context.get_current(), time.time_ns()


@dataclass(slots=True)
class BatchSpans:
    """The `model.batch` span in each traced request's trace, for the one model call they share."""

    spans: list[Span]
    attributes: dict[str, Any]
    started: int  # `time.time_ns()` when the model call began


def open_batch(
    waiting: Sequence[Waiting | None], attributes: Mapping[str, Any], size: int
) -> BatchSpans | None:
    """For each traced request of a batch (`capture`'s, None for untraced ones): its `model.queue`
    span, from when it joined the queue to now, and its `model.batch` span, begun now."""
    active = tracer
    if active is None:
        return None
    now = time.time_ns()
    shared = {
        **attributes,
        BATCH_SIZE: size,
        BATCH_REQUESTS: len(waiting),
        BATCH_ID: f"{random.getrandbits(64):016x}",
    }
    spans: list[Span] = []
    for entry in waiting:
        if entry is None:
            continue
        parent, queued = entry
        active.start_span("model.queue", context=parent, start_time=queued, attributes=attributes).end(now)
        spans.append(active.start_span("model.batch", context=parent, start_time=now, attributes=shared))
    return BatchSpans(spans, shared, now) if spans else None


def close_batch(batch: BatchSpans | None, error: BaseException | None = None) -> None:
    """The batch's model call is over: put it (as `model.predict`) under each request's `model.batch`
    span, and end those."""
    if batch is None or tracer is None:
        return
    now = time.time_ns()
    for span in batch.spans:
        call = tracer.start_span(
            "model.predict",
            context=set_span_in_context(span),
            start_time=batch.started,
            attributes=batch.attributes,
        )
        if error is not None:
            mark_failure(call, error)
            mark_failure(span, error)
        call.end(now)
        span.end(now)
