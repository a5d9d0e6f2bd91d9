"""What crosses processes: auth, bad input, request IDs in every log, outages and readiness."""

from __future__ import annotations

import io
import json
import time
import uuid
from pathlib import Path

import httpx
import pytest
from PIL import Image

pytestmark = pytest.mark.integration

ASSETS = Path(__file__).resolve().parents[1] / "assets"
IRIS = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def assert_error(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] and error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    return error  # type: ignore[no-any-return]


def test_auth(stack, key_factory) -> None:  # type: ignore[no-untyped-def]
    url = stack.url("gateway")
    assert_error(httpx.post(f"{url}/v1/tabular/iris", json=IRIS), 401)
    assert_error(httpx.post(f"{url}/v1/tabular/iris", json=IRIS, headers={"X-API-Key": "mg_wrong"}), 401)
    nlp_only = key_factory(f"nlp-{uuid.uuid4().hex[:6]}", "nlp")
    assert_error(httpx.post(f"{url}/v1/tabular/iris", json=IRIS, headers={"X-API-Key": nlp_only}), 403)
    ok = httpx.post(
        f"{url}/v1/nlp/sentiment", json={"text": "good"}, headers={"Authorization": f"Bearer {nlp_only}"}
    )
    assert ok.status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/tabular/iris", {**IRIS, "sepal_length": 0}, 422),
        ("/v1/tabular/iris", {**IRIS, "sepal_length": "long"}, 422),
        ("/v1/tabular/iris", {"petal_width": 1}, 422),
        ("/v1/tabular/iris/batch", {"instances": [IRIS] * 1001}, 422),
        ("/v1/tabular/fraud", {"tx_amount": -5}, 422),
        ("/v1/nlp/sentiment", {"text": ""}, 422),
        ("/v1/nlp/sentiment", {"text": "x" * 5001}, 422),
        ("/v1/nlp/sentiment", {"text": 42}, 422),
        ("/v1/nlp/sentiment/batch", {"texts": ["a"] * 65}, 422),
        ("/v1/nlp/sentiment", {"text": "fine", "extra": 1}, 422),
    ],
)
def test_bad_json_input(gateway: httpx.Client, path: str, body: dict[str, object], status: int) -> None:
    error = assert_error(gateway.post(path, json=body), status)
    assert error["details"]


def test_malformed_and_oversized_json(gateway: httpx.Client) -> None:
    headers = {"content-type": "application/json"}
    assert_error(gateway.post("/v1/nlp/sentiment", content=b'{"text": "unterminated', headers=headers), 422)
    assert_error(gateway.post("/v1/nlp/sentiment", content=b"x" * (2 * 1024 * 1024), headers=headers), 413)


def png_bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (30_000, 30_000)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "content", "status", "code", "says"),
    [
        ("notes.txt", b"just some text, not an image", 415, "unsupported_media_type", "not a recognisable"),
        ("empty.jpg", b"", 422, "validation_error", "empty"),
        # The header reads, the pixels do not: refused when decoded.
        ("truncated.jpg", (ASSETS / "coffee.jpg").read_bytes()[:2000], 422, "validation_error", "truncated"),
        # ~110 kB on the wire, 900 million pixels once decoded: refused from the header alone.
        ("bomb.png", png_bomb(), 413, "payload_too_large", "pixels"),
    ],
)
def test_bad_uploads(
    gateway: httpx.Client, name: str, content: bytes, status: int, code: str, says: str
) -> None:
    response = gateway.post("/v1/vision/classify", files={"file": (name, content, "image/jpeg")})
    error = assert_error(response, status)
    assert error["code"] == code and says in str(error["message"]), error


def test_upload_without_file_field_and_wrong_type(gateway: httpx.Client) -> None:
    error = assert_error(
        gateway.post("/v1/vision/classify", files={"image": ("a.jpg", b"123", "image/jpeg")}), 422
    )
    assert "file" in json.dumps(error["details"])
    assert_error(gateway.post("/v1/vision/classify", json={"file": "abc"}), 415)
    assert_error(
        gateway.post("/v1/vision/classify", params={"top_k": 0}, files={"file": ("a.jpg", b"1")}), 422
    )


def test_request_id_reaches_every_log(stack, gateway: httpx.Client) -> None:  # type: ignore[no-untyped-def]
    request_id = f"it-{uuid.uuid4().hex}"
    response = gateway.post("/v1/tabular/iris", json=IRIS, headers={"X-Request-ID": request_id})
    assert response.headers["x-request-id"] == request_id

    def lines(name: str) -> list[dict[str, object]]:
        text = (stack.run_dir / f"{name}.log").read_text()
        return [json.loads(line) for line in text.splitlines() if request_id in line]

    def logged_access(name: str) -> bool:
        return any(line["logger"] == "modelgate.access" for line in lines(name))

    # Each process writes its log out on its own schedule: wait until both access lines are there (the
    # last line either writes for this request).
    deadline = time.monotonic() + 10
    while not (logged_access("gateway") and logged_access("tabular")):
        assert time.monotonic() < deadline, "the access lines did not reach the logs within 10 s"
        time.sleep(0.05)
    gateway_lines, service_lines = lines("gateway"), lines("tabular")
    assert gateway_lines and service_lines
    access = [line for line in gateway_lines if line["logger"] == "modelgate.access"]
    assert len(access) == 1
    line = access[0]
    assert line["status"] == 200 and line["path"] == "/v1/tabular/iris" and line["method"] == "POST"
    assert line["key_name"] == "integration" and line["upstream"] == "tabular"
    assert isinstance(line["latency_ms"], float) and isinstance(line["upstream_ms"], float)
    assert all(entry["request_id"] == request_id for entry in service_lines)
    assert not any(
        str(gateway.headers["x-api-key"]) in (stack.run_dir / f"{n}.log").read_text()
        for n in ("gateway", "tabular")
    )


def test_stopped_service_gives_503_while_others_work(stack, gateway: httpx.Client) -> None:  # type: ignore[no-untyped-def]
    stack.stop("nlp")
    try:
        started = time.monotonic()
        error = assert_error(gateway.post("/v1/nlp/sentiment", json={"text": "hello"}), 503)
        assert time.monotonic() - started < 1.0
        assert "nlp" in str(error["message"])
        assert gateway.post("/v1/tabular/iris", json=IRIS).status_code == 200
        with open(ASSETS / "coffee.jpg", "rb") as photo:
            assert gateway.post("/v1/vision/classify", files={"file": photo}).status_code == 200
        # Still ready (it serves the others), naming what is down once its kept verdict is renewed
        # (READINESS_CACHE_SECONDS, 1 s).
        deadline = time.monotonic() + 5
        while (ready := gateway.get("/health/ready")).json()["checks"]["nlp"] == "ready":
            assert ready.status_code == 200 and time.monotonic() < deadline
            time.sleep(0.1)
        assert ready.status_code == 200
        assert ready.json() == {
            "status": "degraded",
            "checks": {"tabular": "ready", "vision": "ready", "nlp": "unreachable"},
        }
        catalog = gateway.get("/v1/models").json()
        assert catalog["unavailable"] == ["nlp"]
    finally:
        stack.start("nlp")
        stack.wait_ready("nlp")
    assert gateway.post("/v1/nlp/sentiment", json={"text": "hello again"}).status_code == 200
    assert gateway.get("/health/ready").status_code == 200


def test_service_readiness_and_metrics(stack) -> None:  # type: ignore[no-untyped-def]
    for name in ("tabular", "vision", "nlp", "gateway"):
        assert httpx.get(stack.url(name) + "/health/live").status_code == 200
        assert httpx.get(stack.url(name) + "/health/ready").status_code == 200
    metrics = httpx.get(stack.url("gateway") + "/metrics").text
    assert (
        "modelgate_http_requests_total" in metrics
        and "modelgate_upstream_request_duration_seconds" in metrics
    )
    assert 'modelgate_model_ready{model="iris"}' in httpx.get(stack.url("tabular") + "/metrics").text
