"""The gateway's own behaviour: auth, request IDs, validation, body limits, upstream error mapping."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

IRIS = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert error["code"] == code
    assert error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    return error  # type: ignore[no-any-return]


def test_missing_key_is_401(client: TestClient) -> None:
    response = client.post("/v1/tabular/iris", json=IRIS)
    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"


def test_unknown_key_is_401(client: TestClient, all_key: str) -> None:
    tampered = all_key[:-1] + ("A" if all_key[-1] != "A" else "B")
    for headers in ({"X-API-Key": tampered}, {"Authorization": f"Bearer {tampered}"}, {"X-API-Key": ""}):
        assert_error(client.post("/v1/tabular/iris", json=IRIS, headers=headers), 401, "unauthorized")


def test_key_in_either_header_is_forwarded(client: TestClient, all_key: str, services: Any) -> None:
    for headers in ({"X-API-Key": all_key}, {"Authorization": f"Bearer {all_key}"}):
        response = client.post("/v1/tabular/iris", json=IRIS, headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["path"] == "/v1/tabular/iris"
    sent = services.requests[-1]
    # The key never travels to the services.
    assert "x-api-key" not in sent.headers and "authorization" not in sent.headers
    assert json.loads(sent.content) == IRIS


def test_scope_is_enforced(client: TestClient, tabular_key: str) -> None:
    headers = {"X-API-Key": tabular_key}
    assert client.post("/v1/tabular/iris", json=IRIS, headers=headers).status_code == 200
    error = assert_error(
        client.post("/v1/nlp/sentiment", json={"text": "hi"}, headers=headers), 403, "forbidden"
    )
    assert "nlp" in str(error["message"])


def test_key_is_never_logged(client: TestClient, all_key: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        client.post("/v1/tabular/iris", json=IRIS, headers={"X-API-Key": all_key})
    access = [r for r in caplog.records if r.name == "modelgate.access"]
    assert access and access[-1].__dict__["key_name"] == "all"
    assert access[-1].__dict__["upstream"] == "tabular"
    assert all(all_key not in r.getMessage() and all_key not in str(r.__dict__) for r in caplog.records)


def test_request_id_kept_generated_and_forwarded(client: TestClient, all_key: str, services: Any) -> None:
    headers = {"X-API-Key": all_key, "X-Request-ID": "client-id-42"}
    response = client.post("/v1/tabular/iris", json=IRIS, headers=headers)
    assert response.headers["x-request-id"] == "client-id-42"
    assert services.requests[-1].headers["x-request-id"] == "client-id-42"

    generated = client.post("/v1/tabular/iris", json=IRIS, headers={"X-API-Key": all_key})
    assert len(generated.headers["x-request-id"]) == 32


@pytest.mark.parametrize("bad_id", ["has space", "x" * 129, "semi;colon", "new\tline", "ünïcode"])
def test_unsafe_request_id_is_replaced(client: TestClient, bad_id: str) -> None:
    response = client.get("/health/live", headers={"X-Request-ID": bad_id.encode()})
    assert response.headers["x-request-id"] != bad_id
    assert len(response.headers["x-request-id"]) == 32


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({**IRIS, "sepal_length": -1}, {"sepal_length"}),
        ({**IRIS, "petal_width": 101}, {"petal_width"}),
        ({**IRIS, "sepal_width": "wide"}, {"sepal_width"}),
        ({"sepal_length": 5.1}, {"sepal_width", "petal_length", "petal_width"}),
        ({**IRIS, "colour": "blue"}, {"colour"}),
    ],
)
def test_invalid_iris_is_422_listing_fields(
    client: TestClient, all_key: str, services: Any, body: dict[str, object], fields: set[str]
) -> None:
    response = client.post("/v1/tabular/iris", json=body, headers={"X-API-Key": all_key})
    error = assert_error(response, 422, "validation_error")
    assert {d["field"] for d in error["details"]} == fields  # type: ignore[attr-defined]
    assert services.requests == []  # refused before costing a hop


def test_malformed_json_is_422(client: TestClient, all_key: str) -> None:
    response = client.post(
        "/v1/tabular/iris",
        content=b'{"sepal_length": 5.1,',
        headers={"X-API-Key": all_key, "content-type": "application/json"},
    )
    assert_error(response, 422, "validation_error")


def test_deeply_nested_json_is_4xx(client: TestClient, all_key: str) -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    response = client.post(
        "/v1/tabular/iris/batch",
        content=body,
        headers={"X-API-Key": all_key, "content-type": "application/json"},
    )
    assert 400 <= response.status_code < 500
    assert "error" in response.json()


def test_batch_bounds(client: TestClient, all_key: str) -> None:
    headers = {"X-API-Key": all_key}
    assert_error(
        client.post("/v1/tabular/iris/batch", json={"instances": []}, headers=headers),
        422,
        "validation_error",
    )
    too_many = {"instances": [IRIS] * 1001}
    assert_error(
        client.post("/v1/tabular/iris/batch", json=too_many, headers=headers), 422, "validation_error"
    )
    assert (
        client.post("/v1/tabular/iris/batch", json={"instances": [IRIS] * 3}, headers=headers).status_code
        == 200
    )


def test_json_body_limit_is_413(client: TestClient, all_key: str, services: Any) -> None:
    body = json.dumps({"text": "x" * 2_000_000}).encode()
    response = client.post(
        "/v1/nlp/sentiment", content=body, headers={"X-API-Key": all_key, "content-type": "application/json"}
    )
    assert_error(response, 413, "payload_too_large")
    assert services.requests == []


def test_upload_limit_is_413_even_without_content_length(client: TestClient, all_key: str) -> None:
    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(100):
            yield b"x" * 1024  # 100 KiB streamed, limit is 64 KiB

    response = client.post(
        "/v1/vision/classify",
        content=chunks(),
        headers={"X-API-Key": all_key, "content-type": "multipart/form-data; boundary=abc"},
    )
    assert_error(response, 413, "payload_too_large")


def test_vision_needs_multipart(client: TestClient, all_key: str) -> None:
    response = client.post("/v1/vision/classify", json={"file": "x"}, headers={"X-API-Key": all_key})
    assert_error(response, 415, "unsupported_media_type")


def test_vision_top_k_is_validated_and_forwarded(client: TestClient, all_key: str, services: Any) -> None:
    files = {"file": ("a.jpg", b"\xff\xd8\xff", "image/jpeg")}
    assert_error(
        client.post("/v1/vision/classify?top_k=11", files=files, headers={"X-API-Key": all_key}),
        422,
        "validation_error",
    )
    response = client.post("/v1/vision/classify?top_k=3", files=files, headers={"X-API-Key": all_key})
    assert response.status_code == 200
    sent = services.requests[-1]
    assert sent.url.params["top_k"] == "3"
    assert sent.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert b"\xff\xd8\xff" in sent.content


@pytest.mark.parametrize(
    ("failure", "status", "code"),
    [
        (httpx.ConnectError("refused"), 503, "service_unavailable"),
        (httpx.ReadTimeout("slow"), 504, "upstream_timeout"),
        (httpx.RemoteProtocolError("cut"), 502, "bad_gateway"),
    ],
)
def test_transport_failures_are_mapped(
    client: TestClient, all_key: str, services: Any, failure: Exception, status: int, code: str
) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise failure

    services.handler = fail
    response = client.post("/v1/nlp/sentiment", json={"text": "hi"}, headers={"X-API-Key": all_key})
    error = assert_error(response, status, code)
    assert "nlp" in str(error["message"])


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, content=b"<html>not json</html>", headers={"content-type": "text/html"}),
        httpx.Response(500, json={"detail": "boom"}),
        httpx.Response(418, json={"error": {"code": "teapot", "message": "x"}}),
    ],
)
def test_unusable_answers_are_502(
    client: TestClient, all_key: str, services: Any, answer: httpx.Response
) -> None:
    services.handler = lambda request: answer
    assert_error(
        client.post("/v1/nlp/sentiment", json={"text": "hi"}, headers={"X-API-Key": all_key}),
        502,
        "bad_gateway",
    )


def test_upstream_client_errors_pass_through(client: TestClient, all_key: str, services: Any) -> None:
    def unprocessable(request: httpx.Request) -> httpx.Response:
        body = {
            "error": {
                "code": "unsupported_media_type",
                "message": "not an image",
                "request_id": request.headers["x-request-id"],
            }
        }
        return httpx.Response(415, json=body)

    services.handler = unprocessable
    files = {"file": ("a.txt", b"hello", "text/plain")}
    response = client.post("/v1/vision/classify", files=files, headers={"X-API-Key": all_key})
    error = assert_error(response, 415, "unsupported_media_type")
    assert error["message"] == "not an image"


def test_readiness_names_what_is_down(client: TestClient, services: Any) -> None:
    assert client.get("/health/ready").status_code == 200

    def nlp_down(request: httpx.Request) -> httpx.Response:
        if request.url.host == "nlp":
            raise httpx.ConnectError("refused")
        return services.default(request)

    services.handler = nlp_down
    error = assert_error(client.get("/health/ready"), 503, "not_ready")
    assert "nlp" in str(error["message"])
    assert error["details"] == [{"component": "nlp", "status": "unreachable"}]
    assert client.get("/health/live").status_code == 200


def test_models_catalog_survives_a_down_service(client: TestClient, all_key: str, services: Any) -> None:
    headers = {"X-API-Key": all_key}
    names = {m["name"] for m in client.get("/v1/models", headers=headers).json()["models"]}
    assert names == {"iris", "imagenet", "sentiment"}

    def vision_down(request: httpx.Request) -> httpx.Response:
        if request.url.host == "vision":
            raise httpx.ConnectError("refused")
        return services.default(request)

    services.handler = vision_down
    body = client.get("/v1/models", headers=headers).json()
    assert {m["name"] for m in body["models"]} == {"iris", "sentiment"}
    assert body["unavailable"] == ["vision"]
    assert_error(client.get("/v1/models"), 401, "unauthorized")


def test_unknown_route_and_method(client: TestClient) -> None:
    assert_error(client.get("/v1/nope"), 404, "not_found")
    assert_error(client.get("/v1/tabular/iris"), 405, "method_not_allowed")
    assert_error(client.get("/v1/tabular/../../etc/passwd"), 404, "not_found")


def test_openapi_documents_each_route_with_schemas(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in (
        "/v1/tabular/iris",
        "/v1/tabular/iris/batch",
        "/v1/tabular/fraud",
        "/v1/vision/classify",
        "/v1/nlp/sentiment",
        "/v1/nlp/sentiment/batch",
        "/v1/models",
    ):
        assert path in paths, path
    iris = paths["/v1/tabular/iris"]["post"]
    assert iris["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/IrisFeatures")
    assert iris["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/IrisResponse")
    assert {"401", "403", "422", "503", "504"} <= set(iris["responses"])
    upload = paths["/v1/vision/classify"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert upload["required"] == ["file"]
    assert spec["components"]["schemas"]["IrisFeatures"]["examples"]
    assert client.get("/docs").status_code == 200


def test_cors_is_off_by_default(client: TestClient) -> None:
    preflight = client.options(
        "/v1/tabular/iris",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in preflight.headers
    plain = client.get("/health/live", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in plain.headers


def test_cors_when_configured(settings, services: Any) -> None:  # type: ignore[no-untyped-def]
    from gateway.app import create_app

    configured = settings.model_copy(update={"cors_allow_origins": "https://app.example"})
    with TestClient(create_app(configured, transport=httpx.MockTransport(services))) as cors_client:
        allowed = cors_client.options(
            "/v1/tabular/iris",
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
        )
        denied = cors_client.options(
            "/v1/tabular/iris",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in denied.headers
