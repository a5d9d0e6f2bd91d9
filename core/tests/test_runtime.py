"""The shared runtime: request IDs, JSON logs, the error shape, body limits, readiness, metrics."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from modelgate_core.artifacts import Manifest
from modelgate_core.context import accept_request_id
from modelgate_core.errors import Unprocessable
from modelgate_core.logging import JsonFormatter
from modelgate_core.model import ModelRunner, ServedModel
from modelgate_core.service import ServiceSettings, create_service_app
from modelgate_core.testing import wait_until_ready


class Doubler(ModelRunner[float, float]):
    """A real (if tiny) model: y = 2x, refusing negative inputs in preprocess."""

    def load(self, model_dir: Path, manifest: Manifest) -> None:
        self.factor = float(manifest.extra.get("factor", 2))

    def preprocess(self, item: float) -> float:
        if item < 0:
            raise Unprocessable("negative input")
        return item

    def predict(self, batch: Sequence[float]) -> Sequence[float]:
        return [x * self.factor for x in batch]

    def postprocess(self, raw: float) -> float:
        return raw


class Numbers(BaseModel):
    values: list[float] = Field(min_length=1, max_length=10)


def make_app(artifacts: Path, **overrides: Any) -> tuple[TestClient, ServedModel[float, float]]:
    served: ServedModel[float, float] = ServedModel("doubler", Doubler(), artifacts)
    router = APIRouter()

    @router.post("/v1/double")
    async def double(body: Numbers) -> dict[str, list[float]]:
        return {"values": await served.infer(body.values)}

    @router.post("/v1/upload")
    async def upload(request: Any = None) -> dict[str, int]:
        return {"n": 0}

    settings = ServiceSettings(artifacts_dir=artifacts, service_name="test-svc", **overrides)
    app = create_service_app(title="t", version="1", settings=settings, models=[served], routers=[router])
    return TestClient(app, raise_server_exceptions=False), served


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    from modelgate_core.artifacts import hash_files, write_manifest

    model_dir = tmp_path / "doubler"
    model_dir.mkdir()
    (model_dir / "weights.txt").write_text("2")
    write_manifest(
        model_dir,
        Manifest(
            name="doubler",
            version="1.0.0",
            domain="tabular",
            created="2026-01-01T00:00:00Z",
            framework="python",
            data_source="none",
            metrics={"accuracy": 1.0},
            extra={"factor": 2},
            files=hash_files(model_dir),
        ),
    )
    return tmp_path


def test_request_id_rules() -> None:
    assert accept_request_id("abc-123_X.y:z") == "abc-123_X.y:z"
    for bad in (None, "", "a b", "x" * 129, "a\r\nSet-Cookie: x=1"):
        assert len(accept_request_id(bad)) == 32


def test_model_is_served_after_loading(artifacts: Path) -> None:
    client, _ = make_app(artifacts)
    with client:
        wait_until_ready(client)
        response = client.post("/v1/double", json={"values": [1, 2.5]}, headers={"x-request-id": "req-1"})
        assert response.json() == {"values": [2.0, 5.0]}
        assert response.headers["x-request-id"] == "req-1"
        models = client.get("/v1/models").json()["models"]
        assert models[0]["name"] == "doubler" and models[0]["metrics"] == {"accuracy": 1.0}
        assert models[0]["state"] == "ready"


def test_not_ready_until_loaded_and_503_in_common_shape(tmp_path: Path) -> None:
    client, _ = make_app(tmp_path / "missing")
    with client:
        ready = client.get("/health/ready")
        assert ready.status_code == 503
        error = ready.json()["error"]
        assert error["code"] == "not_ready" and "doubler" in error["message"]
        assert client.get("/health/live").status_code == 200
        response = client.post("/v1/double", json={"values": [1]})
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "service_unavailable"


def test_errors_share_one_shape(artifacts: Path) -> None:
    client, _ = make_app(artifacts)
    with client:
        wait_until_ready(client)
        cases = [
            (client.post("/v1/double", json={"values": [-1]}), 422, "validation_error"),
            (client.post("/v1/double", json={"values": "x"}), 422, "validation_error"),
            (
                client.post("/v1/double", content=b"{", headers={"content-type": "application/json"}),
                422,
                "validation_error",
            ),
            (client.get("/v1/nothing"), 404, "not_found"),
            (client.delete("/v1/double"), 405, "method_not_allowed"),
        ]
        for response, status, code in cases:
            assert response.status_code == status
            body = response.json()
            assert body["error"]["code"] == code
            assert body["error"]["request_id"] == response.headers["x-request-id"]


def test_json_body_limit(artifacts: Path) -> None:
    client, _ = make_app(artifacts, max_json_bytes=2048)
    with client:
        wait_until_ready(client)
        response = client.post(
            "/v1/double",
            content=b'{"values": [' + b"1," * 2000 + b"1]}",
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"


def test_metrics_count_requests_by_route(artifacts: Path) -> None:
    client, _ = make_app(artifacts)
    with client:
        wait_until_ready(client)
        client.post("/v1/double", json={"values": [1]})
        text = client.get("/metrics").text
        assert (
            'modelgate_http_requests_total{method="POST",route="/v1/double",service="test-svc",status="200"}'
            in text
        )
        assert 'modelgate_model_inference_seconds_count{model="doubler"}' in text


def test_json_formatter_stamps_request_id_and_fields() -> None:
    record = logging.makeLogRecord(
        {"name": "x", "levelno": 20, "levelname": "INFO", "msg": "hello", "request_id": "r1", "status": 200}
    )
    line = json.loads(JsonFormatter(service="svc").format(record))
    assert line["message"] == "hello" and line["request_id"] == "r1"
    assert line["service"] == "svc" and line["status"] == 200 and line["ts"].endswith("Z")
