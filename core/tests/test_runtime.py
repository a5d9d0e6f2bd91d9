"""The shared runtime: request IDs, JSON logs, the error shape, body limits, readiness, metrics."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from modelgate_core.artifacts import Manifest, hash_files, write_manifest
from modelgate_core.context import accept_request_id
from modelgate_core.logging import JsonFormatter
from modelgate_core.service import ServiceSettings, create_service_app
from modelgate_core.testing import wait_until_ready


class Numbers(BaseModel):
    values: list[float] = Field(min_length=1, max_length=10)


@pytest.fixture
def make_app(doubler_runtime: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """`make_app(root, **settings)`: a service with one domain route (`/v1/double`) over the
    repository's `double` model, plus everything `create_service_app` adds (OIP, health, metrics)."""
    monkeypatch.setenv("MODEL_CONTROL_DIR", str(tmp_path / "control"))

    def make(root: Path, **overrides: Any) -> TestClient:
        settings = ServiceSettings(model_repository=root, service_name="test-svc", **overrides)
        repository = settings.repository("tabular", {"sklearn": doubler_runtime})
        router = APIRouter()

        @router.post("/v1/double")
        async def double(body: Numbers) -> dict[str, list[float]]:
            out = await repository.get("double").infer({"x": np.asarray(body.values, dtype=np.float64)})
            return {"values": out["y"].tolist()}

        @router.get("/v1/boom")
        async def boom() -> None:
            raise RuntimeError("a bug, not the caller's fault")

        app = create_service_app(
            title="t", version="1", settings=settings, repository=repository, routers=[router]
        )
        return TestClient(app, raise_server_exceptions=False)

    return make


@pytest.fixture
def root(repo_root: Path, write_version: Any) -> Path:
    folder = write_version(repo_root, "double", "1")
    write_manifest(
        folder,
        Manifest(
            name="double",
            version="1.0.0",
            domain="tabular",
            created="2026-01-01T00:00:00Z",
            framework="python",
            data_source="none",
            metrics={"accuracy": 1.0},
            files=hash_files(folder),
        ),
    )
    return repo_root


def test_request_id_rules() -> None:
    assert accept_request_id("abc-123_X.y:z") == "abc-123_X.y:z"
    for bad in (None, "", "a b", "x" * 129, "a\r\nSet-Cookie: x=1"):
        assert len(accept_request_id(bad)) == 32


def test_model_is_served_after_loading(root: Path, make_app: Any) -> None:
    with make_app(root) as client:
        wait_until_ready(client)
        response = client.post("/v1/double", json={"values": [1, 2.5]}, headers={"x-request-id": "req-1"})
        assert response.json() == {"values": [2.0, 5.0]}
        assert response.headers["x-request-id"] == "req-1"
        (model,) = client.get("/v1/models").json()["models"]
        assert model["name"] == "double" and model["metrics"] == {"accuracy": 1.0}
        assert model["state"] == "READY" and model["version"] == "1.0.0"


def test_an_empty_repository_is_ready_and_answers_404(tmp_path: Path, make_app: Any) -> None:
    with make_app(tmp_path / "missing") as client:
        wait_until_ready(client)
        assert client.get("/health/live").status_code == 200
        response = client.post("/v1/double", json={"values": [1]})
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


def test_oip_metadata_infer_and_predict(root: Path, make_app: Any) -> None:
    with make_app(root) as client:
        wait_until_ready(client)
        assert client.get("/v2").json() == {
            "name": "test-svc",
            "version": "1",
            "extensions": ["binary_tensor_data", "model_repository"],
        }
        assert client.get("/v2/health/ready").json() == {"ready": True}
        meta = client.get("/v2/models/double").json()
        assert meta["versions"] == ["1"] and meta["platform"] == "doubler"
        assert meta["inputs"] == [{"name": "x", "datatype": "FP64", "shape": [-1], "parameters": {}}]
        assert client.get("/v2/models/double/versions/1/ready").json() == {"name": "double", "ready": True}
        infer = client.post(
            "/v2/models/double/versions/1/infer",
            json={"id": "r-7", "inputs": [{"name": "x", "datatype": "FP64", "shape": [2], "data": [1, 2]}]},
        )
        assert infer.status_code == 200
        assert infer.json() == {
            "model_name": "double",
            "model_version": "1",
            "id": "r-7",
            "outputs": [{"name": "y", "datatype": "FP64", "shape": [2], "data": [2.0, 4.0]}],
        }
        predict = client.post("/v1/models/double:predict", json={"instances": [1.5, 3]})
        assert predict.json()["predictions"] == [3.0, 6.0]
        index = client.post("/v2/repository/index").json()
        assert index == [{"name": "double", "version": "1", "state": "READY", "reason": ""}]


def test_v2_errors_have_the_oip_shape(root: Path, make_app: Any) -> None:
    with make_app(root, max_upload_bytes=2048) as client:
        wait_until_ready(client)
        good_input = {"name": "x", "datatype": "FP64", "shape": [1], "data": [1]}
        cases = [
            (client.get("/v2/models/nope"), 404, "not_found", "Unknown model 'nope'"),
            (client.get("/v2/models/double/versions/9"), 404, "not_found", "Unknown version '9'"),
            (client.post("/v2/models/double/infer", content=b"{"), 400, "bad_request", "not valid JSON"),
            (
                client.post("/v2/models/double/infer", json={"inputs": [{**good_input, "datatype": "FP32"}]}),
                400,
                "bad_request",
                "FP64",
            ),
            (
                client.post("/v2/models/double/infer", json={"inputs": [{**good_input, "data": [-1]}]}),
                400,
                "bad_request",
                "negative input",
            ),
            (
                client.post(
                    "/v2/models/double/infer", json={"inputs": [good_input], "outputs": [{"name": "z"}]}
                ),
                400,
                "bad_request",
                "Unknown output 'z'",
            ),
            (
                client.post("/v2/models/double/infer", content=b"[" + b"1," * 2000 + b"1]"),
                413,
                "payload_too_large",
                "2048",
            ),
            (client.post("/v2/repository/models/ghost/load"), 404, "not_found", "No model 'ghost'"),
            (client.post("/v2/repository/index", content=b"[1]"), 400, "bad_request", "JSON object"),
        ]
        for response, status, code, fragment in cases:
            assert response.status_code == status, response.text
            body = response.json()
            assert body["code"] == code and fragment in body["error"], body
            assert body["request_id"] == response.headers["x-request-id"]


def test_v1_errors_share_the_common_shape(root: Path, make_app: Any) -> None:
    with make_app(root) as client:
        wait_until_ready(client)
        cases = [
            (client.post("/v1/double", json={"values": "x"}), 422, "validation_error"),
            (
                client.post("/v1/double", content=b"{", headers={"content-type": "application/json"}),
                422,
                "validation_error",
            ),
            (client.post("/v1/models/double:predict", json={"rows": [1]}), 422, "validation_error"),
            (client.get("/v1/nothing"), 404, "not_found"),
            (client.delete("/v1/double"), 405, "method_not_allowed"),
        ]
        for response, status, code in cases:
            assert response.status_code == status
            body = response.json()
            assert body["error"]["code"] == code
            assert body["error"]["request_id"] == response.headers["x-request-id"]


def test_a_500_carries_the_request_id_and_says_nothing_inside(root: Path, make_app: Any) -> None:
    with make_app(root) as client:
        wait_until_ready(client)
        response = client.get("/v1/boom", headers={"x-request-id": "bug-1"})
        assert response.status_code == 500
        assert response.json() == {
            "error": {"code": "internal_error", "message": "Internal server error", "request_id": "bug-1"}
        }
        assert response.headers["x-request-id"] == "bug-1"
        assert "test-svc;dur=" in response.headers["server-timing"]


def test_json_body_limit(root: Path, make_app: Any) -> None:
    with make_app(root, max_json_bytes=2048) as client:
        wait_until_ready(client)
        response = client.post(
            "/v1/double",
            content=b'{"values": [' + b"1," * 2000 + b"1]}",
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"


def test_metrics_count_requests_by_route(root: Path, make_app: Any) -> None:
    with make_app(root) as client:
        wait_until_ready(client)
        client.post("/v1/double", json={"values": [1]})
        text = client.get("/metrics").text
        assert (
            'modelgate_http_requests_total{method="POST",route="/v1/double",service="test-svc",status="200"}'
            in text
        )
        assert 'modelgate_model_inference_seconds_count{model="double"}' in text


def test_the_openapi_document_describes_the_oip_bodies(root: Path, make_app: Any) -> None:
    with make_app(root) as client:
        spec = client.get("/openapi.json").json()
        infer = spec["paths"]["/v2/models/{name}/infer"]["post"]
        assert set(infer["requestBody"]["content"]) == {"application/json", "application/octet-stream"}
        assert "RequestInput" in spec["components"]["schemas"]
        assert "InferenceRequest" in spec["components"]["schemas"]


def test_json_formatter_stamps_request_id_and_fields() -> None:
    record = logging.makeLogRecord(
        {"name": "x", "levelno": 20, "levelname": "INFO", "msg": "hello", "request_id": "r1", "status": 200}
    )
    line = json.loads(JsonFormatter(service="svc").format(record))
    assert line["message"] == "hello" and line["request_id"] == "r1"
    assert line["service"] == "svc" and line["status"] == 200 and line["ts"].endswith("Z")
