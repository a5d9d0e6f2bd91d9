"""Traces across the real stack: the gateway and the three services under Gunicorn export to an
OTLP/HTTP receiver of the test's own (protobuf decoded with `opentelemetry-proto`). Each request is
one trace spanning the gateway and the service, with the caller's `traceparent` honoured, the steps
under the right parents, and a 503 from a stopped service an error span."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from otlp_receiver import OtlpReceiver, ReceivedSpan

from devstack import LocalStack, copy_repository, running_stack  # type: ignore[import-not-found]

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
OIP_ROUTE = "POST /v2/models/{name}/infer"
INDEX_ROUTE = "POST /v2/repository/index"
IRIS = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
IRIS_OIP = {"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]}


class Traced:
    """The running stack, its receiver and a client with a key."""

    def __init__(self, stack: LocalStack, receiver: OtlpReceiver, client: httpx.Client) -> None:
        self.stack = stack
        self.receiver = receiver
        self.client = client

    def log_lines(
        self, name: str, trace_id: str, path: str | None = None, timeout: float = 10
    ) -> list[dict[str, object]]:
        """`name`'s access-log lines of trace `trace_id` (of `path`, when given), once there is one (lines
        are written in batches, every 0.2 s; a trace may also hold other requests, such as index reads)."""
        deadline = time.monotonic() + timeout
        while True:
            lines = []
            for raw in (self.stack.run_dir / f"{name}.log").read_text().splitlines():
                if raw.startswith("{"):
                    line = json.loads(raw)
                    ours = line.get("logger") == "modelgate.access" and line.get("trace_id") == trace_id
                    if ours and (path is None or line.get("path") == path):
                        lines.append(line)
            if lines:
                return lines
            assert time.monotonic() < deadline, f"no access-log line of trace {trace_id} in {name}.log"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traced]:
    built = REPO / "models"
    if not (built / "iris" / "1").is_dir():
        pytest.fail("models/ has no built-in models: run `make models` (make test does)")
    repository = copy_repository(built, tmp_path_factory.mktemp("repository") / "models")
    with OtlpReceiver() as receiver:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",  # ms: spans arrive soon after their request
            "RESPONSE_CACHE_ENABLED": "true",  # per process (no Redis here): for the cache's span
        }
        with running_stack(repository=repository, extra_env=env) as stack:
            key = stack.create_key("tracing", "*")
            with httpx.Client(
                base_url=stack.url("gateway"), headers={"X-API-Key": key}, timeout=60
            ) as client:
                yield Traced(stack, receiver, client)


def one(spans: list[ReceivedSpan], service: str, name: str, **attributes: object) -> ReceivedSpan:
    """The one span of `service` named `name` (with these attribute values) among `spans`."""
    found = [
        s
        for s in spans
        if s.service == service
        and s.name == name
        and all(s.attributes.get(k.replace("_", ".")) == v for k, v in attributes.items())
    ]
    assert len(found) == 1, (service, name, attributes, [(s.service, s.name, s.attributes) for s in spans])
    return found[0]


def children(spans: list[ReceivedSpan], parent: ReceivedSpan) -> set[str]:
    return {s.name for s in spans if s.parent_id == parent.span_id}


def test_an_oip_call_is_one_trace_under_the_clients_span(traced: Traced) -> None:
    response = traced.client.post(
        "/v2/models/iris/infer", json=IRIS_OIP, headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"}
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-trace-id"] == CLIENT_TRACE
    spans = traced.receiver.wait_for_trace(
        CLIENT_TRACE, {("gateway", OIP_ROUTE), ("tabular-service", OIP_ROUTE)}
    )
    # One trace, both processes. The gateway may also have re-read the services' model indexes for this
    # request (its directory keeps them 2 s): those reads are in the trace too, each under its upstream span.
    reads = [s for s in spans if s.kind == "server" and s.name == INDEX_ROUTE]
    assert {s.service for s in spans} == {"gateway", "tabular-service"} | {s.service for s in reads}
    for read in reads:
        (parent,) = (s for s in spans if s.span_id == read.parent_id)
        assert parent.name == "gateway.upstream" and parent.attributes["url.path"] == "/v2/repository/index"

    gateway = one(spans, "gateway", OIP_ROUTE)
    assert gateway.kind == "server" and gateway.parent_id == CLIENT_SPAN and not gateway.error
    assert gateway.attributes["http.response.status_code"] == 200
    assert gateway.attributes["modelgate.model"] == "iris"
    assert gateway.attributes["modelgate.key_name"] == "tracing"
    assert gateway.attributes["modelgate.request_id"] == response.headers["x-request-id"]
    auth = one(spans, "gateway", "gateway.auth")
    limit = one(spans, "gateway", "gateway.rate_limit")
    upstream = one(spans, "gateway", "gateway.upstream", url_path="/v2/models/iris/infer")
    for step in (auth, limit, upstream):
        assert step.parent_id == gateway.span_id and not step.error, step
    assert auth.end_ns <= limit.start_ns and limit.end_ns <= upstream.start_ns
    assert upstream.kind == "client"
    assert upstream.attributes["http.response.status_code"] == 200
    assert upstream.attributes["modelgate.upstream"] == "tabular"

    service = one(spans, "tabular-service", OIP_ROUTE)
    assert service.kind == "server" and service.parent_id == upstream.span_id  # traceparent got there
    assert service.attributes["http.response.status_code"] == 200 and not service.error
    # (Its end may come a little after the gateway has the answer: the service ends it once it is sent.)
    assert upstream.start_ns <= service.start_ns <= upstream.end_ns
    # iris is light: its steps run at once (on the loop or one thread), after the wait for its slot.
    assert children(spans, service) == {
        "model.queue",
        "model.preprocess",
        "model.predict",
        "model.postprocess",
    }
    for name in ("model.queue", "model.preprocess", "model.predict", "model.postprocess"):
        step = one(spans, "tabular-service", name)
        assert step.attributes["modelgate.model.name"] == "iris", step
        assert step.attributes["modelgate.model.version"] == "1", step
        assert service.start_ns <= step.start_ns <= step.end_ns <= service.end_ns
    assert one(spans, "tabular-service", "model.predict").attributes["modelgate.batch.size"] == 1

    # A log line leads to its trace: the access-log lines of both processes carry its ID.
    (gateway_line,) = traced.log_lines("gateway", CLIENT_TRACE, "/v2/models/iris/infer")
    assert gateway_line["path"] == "/v2/models/iris/infer" and gateway_line["status"] == 200
    assert gateway_line["request_id"] == response.headers["x-request-id"]
    (service_line,) = traced.log_lines("tabular", CLIENT_TRACE, "/v2/models/iris/infer")
    assert service_line["request_id"] == response.headers["x-request-id"]


def test_a_request_without_traceparent_starts_its_own_trace_and_a_cache_hit_ends_it(traced: Traced) -> None:
    # Features no other test sends: the first is a miss, the second a hit (same canonical body).
    features = {**IRIS, "sepal_length": 6.3}
    miss = traced.client.post("/v1/tabular/iris", json=features)
    assert miss.status_code == 200 and miss.headers["x-cache"] == "miss"
    route = "POST /v1/tabular/{path:path}"
    miss_trace = miss.headers["x-trace-id"]
    spans = traced.receiver.wait_for_trace(
        miss_trace, {("gateway", route), ("tabular-service", "POST /v1/tabular/iris")}
    )
    gateway = one(spans, "gateway", route)
    assert gateway.parent_id == ""  # nobody sent a traceparent: the gateway's span is the root
    cache = one(spans, "gateway", "gateway.cache")
    assert cache.parent_id == gateway.span_id and cache.attributes["modelgate.cache.hit"] is False
    upstream = one(spans, "gateway", "gateway.upstream", url_path="/v1/tabular/iris")
    assert upstream.parent_id == gateway.span_id and cache.end_ns <= upstream.start_ns
    service = one(spans, "tabular-service", "POST /v1/tabular/iris")
    assert service.parent_id == upstream.span_id
    assert {"model.preprocess", "model.predict", "model.postprocess"} <= children(spans, service)

    hit = traced.client.post("/v1/tabular/iris", json=dict(reversed(features.items())))
    assert hit.status_code == 200 and hit.headers["x-cache"] == "hit"
    hit_trace = hit.headers["x-trace-id"]
    assert hit_trace != miss_trace
    hit_spans = traced.receiver.wait_for_trace(hit_trace, {("gateway", route)})
    assert one(hit_spans, "gateway", "gateway.cache").attributes["modelgate.cache.hit"] is True
    # Answered from the cache: no call to the service, in this trace or any other.
    assert not [
        s
        for s in hit_spans
        if s.name == "gateway.upstream" and s.attributes["url.path"] == "/v1/tabular/iris"
    ]
    assert {s.service for s in hit_spans} == {"gateway"}


def test_a_batched_model_shows_its_batch(traced: Traced) -> None:
    response = traced.client.post("/v1/nlp/sentiment", json={"text": "A wonderful, happy day"})
    assert response.status_code == 200, response.text
    trace_id = response.headers["x-trace-id"]
    spans = traced.receiver.wait_for_trace(
        trace_id, {("gateway", "POST /v1/nlp/{path:path}"), ("nlp-service", "POST /v1/nlp/sentiment")}
    )
    service = one(spans, "nlp-service", "POST /v1/nlp/sentiment")
    assert (
        service.parent_id == one(spans, "gateway", "gateway.upstream", url_path="/v1/nlp/sentiment").span_id
    )
    assert children(spans, service) == {"model.preprocess", "model.queue", "model.batch", "model.postprocess"}
    batch = one(spans, "nlp-service", "model.batch")
    call = one(spans, "nlp-service", "model.predict")
    assert call.parent_id == batch.span_id
    assert batch.attributes["modelgate.batch.size"] == 1 and batch.attributes["modelgate.batch.requests"] == 1
    assert (
        batch.attributes["modelgate.model.name"] == "sentiment"
        and batch.attributes["modelgate.model.version"]
    )
    assert len(str(batch.attributes["modelgate.batch.id"])) == 16
    assert batch.start_ns <= call.start_ns <= call.end_ns <= batch.end_ns


def test_a_stopped_service_is_a_503_error_span(traced: Traced) -> None:
    # Last in this module: it stops the vision service of the module's stack.
    traced.stack.stop("vision")
    image = (REPO / "tests" / "assets").glob("*.jpg")
    files = {"file": ("cat.jpg", next(image).read_bytes(), "image/jpeg")}
    response = traced.client.post("/v1/vision/classify", files=files)
    assert response.status_code == 503, response.text
    trace_id = response.headers["x-trace-id"]
    route = "POST /v1/vision/{path:path}"
    spans = traced.receiver.wait_for_trace(trace_id, {("gateway", route), ("gateway", "gateway.upstream")})
    gateway = one(spans, "gateway", route)
    assert gateway.error and gateway.attributes["http.response.status_code"] == 503
    upstream = one(spans, "gateway", "gateway.upstream", url_path="/v1/vision/classify")
    assert upstream.parent_id == gateway.span_id and upstream.kind == "client"
    assert upstream.error and upstream.attributes["error.type"] == "ConnectError"
    assert upstream.attributes["modelgate.error.code"] == "service_unavailable"
    assert "unavailable" in upstream.status_message
    assert {s.service for s in spans} == {"gateway"}  # nobody answered on the other side
