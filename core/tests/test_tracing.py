"""Traces (`modelgate_core.tracing`): off without an endpoint (no SDK, no span objects, no header), and
on, a real service app's spans reach a real OTLP/HTTP receiver of the test's own, with the caller's
`traceparent` honoured, the steps under the request's span, and a batch in each of its requests' traces."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from modelgate_core import tracing
from modelgate_core.logging import JsonFormatter
from modelgate_core.service import BatchingSettings, ServiceSettings, create_service_app
from modelgate_core.testing import wait_until_ready

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from otlp_receiver import OtlpReceiver, ReceivedSpan

CORE = Path(__file__).resolve().parents[1]
INFER = "/v2/models/double/infer"
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
OTEL_VARIABLES = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
)


def body(*values: float) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": [len(values)], "datatype": "FP64", "data": list(values)}]}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MODEL_CONTROL_DIR", str(tmp_path / "control"))
    yield
    tracing.shutdown()  # a failed test must not leave the next one tracing


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[OtlpReceiver]:
    """A receiver, and the environment that points this process's exporter at it."""
    with OtlpReceiver() as otlp:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.endpoint)
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
        yield otlp


@pytest.fixture
def service_app(doubler_runtime: Any, repo_root: Path, write_version: Any) -> FastAPI:
    write_version(repo_root, "double", "1")
    settings = ServiceSettings(model_repository=repo_root, service_name="test-svc")
    repository = settings.repository("tabular", {"sklearn": doubler_runtime})
    return create_service_app(title="t", version="1", settings=settings, repository=repository)


def by_name(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    named = {span.name: span for span in spans}
    assert len(named) == len(spans), [s.name for s in spans]  # each step once
    return named


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}, False),  # no endpoint: off
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": ""}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
    ],
)
def test_only_an_endpoint_turns_tracing_on(environ: dict[str, str], on: bool) -> None:
    assert tracing.configured(environ) is on


def test_off_a_request_makes_no_span_and_the_sdk_is_never_loaded(tmp_path: Path) -> None:
    # A fresh interpreter: whether the SDK was imported is only telling in a process of its own.
    script = f"""
import sys
sys.path.insert(0, {str(CORE / "tests")!r})
from conftest import Doubler, _write_version
from pathlib import Path
from fastapi.testclient import TestClient
from modelgate_core import tracing
from modelgate_core.service import ServiceSettings, create_service_app
from modelgate_core.testing import wait_until_ready
root = Path({str(tmp_path / "models")!r})
_write_version(root, "double", "1")
settings = ServiceSettings(model_repository=root, service_name="off-svc")
app = create_service_app(title="t", version="1", settings=settings,
                         repository=settings.repository("tabular", {{"sklearn": Doubler}}))
with TestClient(app) as client:
    wait_until_ready(client)
    body = {{"inputs": [{{"name": "x", "shape": [1], "datatype": "FP64", "data": [1.0]}}]}}
    traceparent = "00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
    response = client.post("{INFER}", json=body, headers={{"traceparent": traceparent}})
    assert response.status_code == 200, response.text
    print("header", "x-trace-id" in response.headers)
    print("tracer", tracing.tracer is not None)
    print("step", tracing.step("model.predict") is tracing._OFF, tracing.begin("model.queue"))
print("sdk", sorted(m for m in sys.modules if m.startswith("opentelemetry.sdk")))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["MODEL_CONTROL_DIR"] = str(tmp_path / "control")
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    lines = [
        line
        for line in result.stdout.splitlines()
        if line.split(" ")[0] in {"header", "tracer", "step", "sdk"}
    ]
    assert lines == ["header False", "tracer False", "step True None", "sdk []"], result.stdout


def test_a_request_is_one_trace_under_the_callers_span(
    receiver: OtlpReceiver, service_app: FastAPI, doublers: list[Any]
) -> None:
    access = io.StringIO()
    handler = logging.StreamHandler(access)
    handler.setFormatter(JsonFormatter("test-svc"))
    logging.getLogger("modelgate.access").addHandler(handler)
    try:
        with TestClient(service_app) as client:
            wait_until_ready(client)
            traceparent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
            response = client.post(INFER, json=body(1.5), headers={"traceparent": traceparent})
            assert response.status_code == 200 and response.json()["outputs"][0]["data"] == [3.0]
            assert response.headers["x-trace-id"] == CLIENT_TRACE
            refused = client.post(INFER, json=body(-1.0))  # the doubler refuses it in preprocess: 400
            assert refused.status_code == 400
            own_trace = refused.headers["x-trace-id"]
            assert len(own_trace) == 32 and own_trace != CLIENT_TRACE  # no traceparent: a trace of its own
            server = ("test-svc", "POST /v2/models/{name}/infer")
            spans = receiver.wait_for_trace(CLIENT_TRACE, {server})
            failed = receiver.wait_for_trace(own_trace, {server})
    finally:
        logging.getLogger("modelgate.access").removeHandler(handler)

    named = by_name(spans)
    assert set(named) == {
        "POST /v2/models/{name}/infer",
        "model.queue",
        "model.preprocess",
        "model.predict",
        "model.postprocess",
    }
    root = named.pop("POST /v2/models/{name}/infer")
    assert root.kind == "server" and root.parent_id == CLIENT_SPAN and not root.error
    assert root.attributes["http.response.status_code"] == 200
    assert root.attributes["http.route"] == "/v2/models/{name}/infer"
    assert root.attributes["modelgate.request_id"] == response.headers["x-request-id"]
    for step in named.values():
        assert step.parent_id == root.span_id and step.service == "test-svc" and not step.error, step
        assert step.attributes[tracing.MODEL_NAME] == "double"
        assert step.attributes[tracing.MODEL_VERSION] == "1"
        assert root.start_ns <= step.start_ns <= step.end_ns <= root.end_ns
    assert named["model.predict"].attributes[tracing.BATCH_SIZE] == 1
    assert named["model.queue"].end_ns <= named["model.predict"].start_ns
    assert named["model.preprocess"].end_ns <= named["model.predict"].start_ns
    assert named["model.predict"].end_ns <= named["model.postprocess"].start_ns

    # The refused request: a 400 is an answer, not a server error; the step says why it stopped.
    failed_named = by_name(failed)
    assert set(failed_named) == {"POST /v2/models/{name}/infer", "model.preprocess"}
    failed_root = failed_named["POST /v2/models/{name}/infer"]
    assert failed_root.parent_id == "" and not failed_root.error
    assert failed_root.attributes["http.response.status_code"] == 400
    assert failed_named["model.preprocess"].attributes["modelgate.error.code"] == "bad_request"

    # The access-log lines carry the trace IDs (the header's).
    # Only the infer lines: health polls are logged too when an earlier test left the logger at DEBUG.
    lines = [json.loads(line) for line in access.getvalue().splitlines()]
    infers = [(line["status"], line["trace_id"]) for line in lines if line["path"] == INFER]
    assert infers == [(200, CLIENT_TRACE), (400, own_trace)]


def test_otel_service_name_wins_over_the_process_name(
    receiver: OtlpReceiver, service_app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "renamed")
    with TestClient(service_app) as client:
        wait_until_ready(client)
        trace_id = client.post(INFER, json=body(2.0)).headers["x-trace-id"]
        spans = receiver.wait_for_trace(trace_id, {("renamed", "POST /v2/models/{name}/infer")})
    assert {span.service for span in spans} == {"renamed"}


def test_an_unsampled_caller_is_not_recorded(
    receiver: OtlpReceiver, service_app: FastAPI, doublers: list[Any]
) -> None:
    with TestClient(service_app) as client:
        wait_until_ready(client)
        unsampled = client.post(
            INFER, json=body(1.0), headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-00"}
        )
        # The trace ID still ties the log lines together; nothing of it is exported.
        assert unsampled.headers["x-trace-id"] == CLIENT_TRACE
        sampled = client.post(INFER, json=body(1.0)).headers["x-trace-id"]
        receiver.wait_for_trace(sampled, {("test-svc", "POST /v2/models/{name}/infer")})
    # Exported in order of ending: the later request's spans arrived, so the earlier one's would have.
    assert receiver.trace(CLIENT_TRACE) == []
    assert doublers[-1].calls == [1, 1]


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)  # runs no lifespan: entered here
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://svc") as client,
    ):
        for _ in range(400):
            if (await client.get("/health/ready")).status_code == 200:
                break
            await asyncio.sleep(0.025)
        yield client


async def test_a_batch_is_in_the_trace_of_each_of_its_requests(
    receiver: OtlpReceiver, doubler_runtime: Any, repo_root: Path, write_version: Any, doublers: list[Any]
) -> None:
    write_version(repo_root, "double", "1")
    # A long wait: the three concurrent requests surely meet in one batch.
    settings = BatchingSettings(
        model_repository=repo_root, service_name="batch-svc", batch_max_size=8, batch_max_wait_ms=300
    )
    repository = settings.repository("tabular", {"sklearn": doubler_runtime})
    app = create_service_app(title="t", version="1", settings=settings, repository=repository)
    async with running(app) as client:
        answers = await asyncio.gather(*(client.post(INFER, json=body(float(i))) for i in (1, 2, 3)))
    assert [a.json()["outputs"][0]["data"] for a in answers] == [[2.0], [4.0], [6.0]]
    assert doublers[-1].calls == [3]  # one model call for the three
    server = ("batch-svc", "POST /v2/models/{name}/infer")
    traces = [receiver.wait_for_trace(a.headers["x-trace-id"], {server}) for a in answers]
    assert len({a.headers["x-trace-id"] for a in answers}) == 3
    batch_ids = set()
    for spans in traces:
        named = by_name(spans)
        assert set(named) == {
            "POST /v2/models/{name}/infer",
            "model.preprocess",
            "model.queue",
            "model.batch",
            "model.predict",
            "model.postprocess",
        }
        root = named["POST /v2/models/{name}/infer"]
        for name in ("model.preprocess", "model.queue", "model.batch", "model.postprocess"):
            assert named[name].parent_id == root.span_id, name
        batch, call = named["model.batch"], named["model.predict"]
        assert call.parent_id == batch.span_id
        assert batch.attributes[tracing.BATCH_SIZE] == 3 and batch.attributes[tracing.BATCH_REQUESTS] == 3
        assert (
            call.attributes[tracing.MODEL_NAME] == "double" and call.attributes[tracing.MODEL_VERSION] == "1"
        )
        assert named["model.queue"].end_ns <= batch.start_ns <= call.start_ns <= call.end_ns <= batch.end_ns
        batch_ids.add(batch.attributes[tracing.BATCH_ID])
    assert len(batch_ids) == 1  # the same batch, seen from each of its requests
    # The dispatcher's model call started no trace of its own.
    assert {span.trace_id for span in receiver.spans()} == {a.headers["x-trace-id"] for a in answers}
