"""The gateway's own behaviour on the domain routes: auth, request IDs, unparsed forwarding, body limits,
upstream error mapping, readiness, the catalogue, CORS."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.config import GatewaySettings

IRIS = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
# The fake services (conftest.FakeServices); typed loosely as conftest is not importable from here.
FakeServices = Any


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The common error shape (every path but /v2): `{"error": {"code", "message", "request_id"}}`."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert error["code"] == code
    assert error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    return error  # type: ignore[no-any-return]


def test_missing_key_is_401(client: TestClient, services: FakeServices) -> None:
    response = client.post("/v1/tabular/iris", json=IRIS)
    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"
    assert services.sent("/v1/tabular/iris") == []


def test_unknown_key_is_401(client: TestClient, all_key: str) -> None:
    tampered = all_key[:-1] + ("A" if all_key[-1] != "A" else "B")
    for headers in ({"X-API-Key": tampered}, {"Authorization": f"Bearer {tampered}"}, {"X-API-Key": ""}):
        assert_error(client.post("/v1/tabular/iris", json=IRIS, headers=headers), 401, "unauthorized")


def test_key_in_either_header_is_forwarded(client: TestClient, all_key: str, services: FakeServices) -> None:
    for headers in ({"X-API-Key": all_key}, {"Authorization": f"Bearer {all_key}"}):
        response = client.post("/v1/tabular/iris", json=IRIS, headers=headers)
        assert response.status_code == 200, response.text
        assert response.json() == {"ok": True, "service": "tabular", "path": "/v1/tabular/iris"}
    sent = services.requests[-1]
    # The key never travels to the services.
    assert "x-api-key" not in sent.headers and "authorization" not in sent.headers
    assert json.loads(sent.content) == IRIS


def test_each_domain_goes_to_its_service(client: TestClient, all_key: str) -> None:
    headers = {"X-API-Key": all_key}
    for service, path in (("tabular", "fraud"), ("nlp", "sentiment/batch"), ("vision", "classify")):
        body = client.post(f"/v1/{service}/{path}", json={}, headers=headers).json()
        assert body == {"ok": True, "service": service, "path": f"/v1/{service}/{path}"}


def test_scope_is_enforced(client: TestClient, tabular_key: str, services: FakeServices) -> None:
    headers = {"X-API-Key": tabular_key}
    assert client.post("/v1/tabular/iris", json=IRIS, headers=headers).status_code == 200
    error = assert_error(
        client.post("/v1/nlp/sentiment", json={"text": "hi"}, headers=headers), 403, "forbidden"
    )
    assert "'nlp'" in error["message"]
    assert services.sent("/v1/nlp/sentiment") == []


def test_model_scope_does_not_open_domain_routes(client: TestClient, make_key: Any) -> None:
    key = make_key("iris-only", ("model:iris",))
    assert_error(client.post("/v1/tabular/iris", json=IRIS, headers={"X-API-Key": key}), 403, "forbidden")


def test_body_content_type_and_query_go_through_unparsed(
    client: TestClient, all_key: str, services: FakeServices
) -> None:
    raw = b'{"b": 2,\n "a": [1, 2.50]}'
    response = client.post(
        "/v1/tabular/anything/deeper?x=1&x=2&y=%C3%A9",
        content=raw,
        headers={"X-API-Key": all_key, "content-type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 200
    sent = services.requests[-1]
    assert sent.content == raw  # byte for byte: not re-serialised
    assert sent.headers["content-type"] == "application/json; charset=utf-8"
    assert sent.url.params.get_list("x") == ["1", "2"] and sent.url.params["y"] == "é"
    assert sent.url.path == "/v1/tabular/anything/deeper"


def test_service_validation_error_passes_through(
    client: TestClient, all_key: str, services: FakeServices
) -> None:
    def invalid(request: httpx.Request) -> httpx.Response:
        body = {
            "error": {
                "code": "validation_error",
                "message": "Invalid request: sepal_length",
                "request_id": request.headers["x-request-id"],
                "details": [{"field": "sepal_length", "message": "must be > 0", "type": "greater_than"}],
            }
        }
        return httpx.Response(422, json=body)

    services.handler = invalid
    response = client.post(
        "/v1/tabular/iris", json={**IRIS, "sepal_length": -1}, headers={"X-API-Key": all_key}
    )
    error = assert_error(response, 422, "validation_error")
    assert error["details"] == [{"field": "sepal_length", "message": "must be > 0", "type": "greater_than"}]


def test_key_is_never_logged(client: TestClient, all_key: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        client.post("/v1/tabular/iris", json=IRIS, headers={"X-API-Key": all_key})
    access = [r for r in caplog.records if r.name == "modelgate.access"]
    assert access and access[-1].__dict__["key_name"] == "all"
    assert access[-1].__dict__["upstream"] == "tabular"
    assert all(all_key not in r.getMessage() and all_key not in str(r.__dict__) for r in caplog.records)


def test_request_id_kept_generated_and_forwarded(
    client: TestClient, all_key: str, services: FakeServices
) -> None:
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


def test_only_allowlisted_headers_cross(client: TestClient, all_key: str, services: FakeServices) -> None:
    def chatty(request: httpx.Request) -> httpx.Response:
        headers = {"x-internal": "secret", "set-cookie": "a=b", "server-timing": "model;dur=1.5"}
        return httpx.Response(200, json={"ok": True}, headers=headers)

    services.handler = chatty
    response = client.post(
        "/v1/tabular/iris",
        json=IRIS,
        headers={"X-API-Key": all_key, "Cookie": "session=1", "X-Forwarded-For": "1.2.3.4"},
    )
    sent = services.requests[-1]
    assert "cookie" not in sent.headers and "x-forwarded-for" not in sent.headers
    assert "x-internal" not in response.headers and "set-cookie" not in response.headers
    assert "model;dur=1.5" in response.headers["server-timing"]


def test_json_body_limit_is_413(client: TestClient, all_key: str, services: FakeServices) -> None:
    body = json.dumps({"text": "x" * 20_000}).encode()  # over the 16 KiB JSON limit, under the upload one
    response = client.post(
        "/v1/nlp/sentiment", content=body, headers={"X-API-Key": all_key, "content-type": "application/json"}
    )
    assert_error(response, 413, "payload_too_large")
    assert services.sent("/v1/nlp/sentiment") == []


def test_json_body_limit_holds_without_content_length(
    client: TestClient, all_key: str, services: FakeServices
) -> None:
    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(20):
            yield b"x" * 1024  # 20 KiB streamed, JSON limit is 16 KiB

    response = client.post(
        "/v1/nlp/sentiment",
        content=chunks(),
        headers={"X-API-Key": all_key, "content-type": "application/json"},
    )
    assert_error(response, 413, "payload_too_large")
    assert services.sent("/v1/nlp/sentiment") == []


def test_upload_gets_the_upload_limit(client: TestClient, all_key: str, services: FakeServices) -> None:
    files = {"file": ("a.jpg", b"\xff\xd8\xff" + b"x" * 40_000, "image/jpeg")}  # over JSON, under upload
    response = client.post("/v1/vision/classify?top_k=3", files=files, headers={"X-API-Key": all_key})
    assert response.status_code == 200
    sent = services.requests[-1]
    assert sent.url.params["top_k"] == "3"
    assert sent.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert b"\xff\xd8\xff" in sent.content


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


@pytest.mark.parametrize(
    ("failure", "status", "code"),
    [
        (httpx.ConnectError("refused"), 503, "service_unavailable"),
        (httpx.ReadTimeout("slow"), 504, "upstream_timeout"),
        (httpx.RemoteProtocolError("cut"), 502, "bad_gateway"),
    ],
)
def test_transport_failures_are_mapped(
    client: TestClient, all_key: str, services: FakeServices, failure: Exception, status: int, code: str
) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise failure

    services.handler = fail
    response = client.post("/v1/nlp/sentiment", json={"text": "hi"}, headers={"X-API-Key": all_key})
    error = assert_error(response, status, code)
    assert "nlp" in error["message"]


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, content=b"<html>not json</html>", headers={"content-type": "text/html"}),
        httpx.Response(200, content=b"\x00\x01", headers={"content-type": "application/octet-stream"}),
        httpx.Response(500, json={"detail": "boom"}),
        httpx.Response(418, json={"error": {"code": "teapot", "message": "x"}}),
        # The OIP's string error is only an error shape on /v2 paths.
        httpx.Response(400, json={"error": "bad input"}),
    ],
)
def test_unusable_answers_are_502(
    client: TestClient, all_key: str, services: FakeServices, answer: httpx.Response
) -> None:
    services.handler = lambda request: answer
    assert_error(
        client.post("/v1/nlp/sentiment", json={"text": "hi"}, headers={"X-API-Key": all_key}),
        502,
        "bad_gateway",
    )


@pytest.mark.parametrize("status", [400, 404, 409, 415, 422, 429, 503])
def test_upstream_client_errors_pass_through(
    client: TestClient, all_key: str, services: FakeServices, status: int
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        body = {"error": {"code": "some_code", "message": "not an image", "request_id": "r"}}
        return httpx.Response(status, json=body, headers={"retry-after": "3"})

    services.handler = refuse
    files = {"file": ("a.txt", b"hello", "text/plain")}
    response = client.post("/v1/vision/classify", files=files, headers={"X-API-Key": all_key})
    assert response.status_code == status
    assert response.json()["error"]["message"] == "not an image"
    assert response.headers["retry-after"] == "3"


def test_unknown_route_and_method(client: TestClient, all_key: str, services: FakeServices) -> None:
    assert_error(client.get("/v1/nope"), 404, "not_found")

    def not_allowed(request: httpx.Request) -> httpx.Response:
        rid = request.headers["x-request-id"]
        body = {"error": {"code": "method_not_allowed", "message": "Method Not Allowed", "request_id": rid}}
        return httpx.Response(405, json=body, headers={"allow": "POST"})

    services.handler = not_allowed
    # The service knows its routes' methods: its 405 and `Allow` are what the client gets.
    response = client.put("/v1/tabular/iris", json=IRIS, headers={"X-API-Key": all_key})
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST"
    assert services.requests[-1].method == "PUT"


@pytest.fixture
def served(settings: GatewaySettings, services: FakeServices) -> Iterator[int]:
    """The gateway app under a real Uvicorn server on a local port; yields the port.

    For requests an HTTP client would rewrite: httpx (and so TestClient) removes `.` and `..` segments
    from every URL before sending it, so only a raw request shows what the gateway does with them.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()  # connections made before the server starts wait in the backlog
    app = create_app(settings, transport=httpx.MockTransport(services))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        server.should_exit = True
        thread.join(10)
        listener.close()
    assert not thread.is_alive(), "the server did not stop"


def raw_request(port: int, method: str, target: str, headers: dict[str, str], body: bytes) -> httpx.Response:
    """Send `target` byte for byte (http.client does not normalise it) and read the whole answer."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, target, body=body, headers=headers)
        answer = connection.getresponse()
        return httpx.Response(answer.status, headers=answer.getheaders(), content=answer.read())
    finally:
        connection.close()


@pytest.mark.parametrize(
    "target",
    [
        "/v1/tabular/../../etc/passwd",
        "/v1/tabular/../v2/repository/index",  # one of the gateway's own routes, on the service
        "/v1/tabular/a/../../nlp/sentiment",  # another service's route, on this one
        "/v1/tabular/./iris",
        "/v1/tabular/a/%2e%2e/%2e%2e/v2/repository/index",
        "/v1/tabular/%2E%2E/nlp/sentiment",
        "/v1/tabular/%2e",
        "/v1/tabular/x%253F",  # would be a query once decoded again
        "/v1/tabular/a%5Cb",
    ],
)
def test_paths_that_would_escape_are_404(
    served: int, all_key: str, services: FakeServices, target: str
) -> None:
    headers = {"X-API-Key": all_key, "content-type": "application/json"}
    response = raw_request(served, "POST", target, headers, b"{}")
    error = assert_error(response, 404, "not_found")
    assert error["message"] == f"Not found: {unquote(target)}"  # the path the gateway was sent, decoded
    assert services.requests == []  # no service was asked anything


def test_a_plain_path_goes_through_the_raw_server(served: int, all_key: str, services: FakeServices) -> None:
    """The raw requests above reach the real route: a plain one is forwarded as sent."""
    headers = {"X-API-Key": all_key, "content-type": "application/json"}
    response = raw_request(served, "POST", "/v1/tabular/iris", headers, json.dumps(IRIS).encode())
    assert response.status_code == 200, response.text
    assert response.json() == {"ok": True, "service": "tabular", "path": "/v1/tabular/iris"}
    assert json.loads(services.sent("/v1/tabular/iris")[0].content) == IRIS


def test_models_catalog_survives_a_down_service(
    client: TestClient, all_key: str, services: FakeServices
) -> None:
    headers = {"X-API-Key": all_key}
    names = {m["name"] for m in client.get("/v1/models", headers=headers).json()["models"]}
    assert names == {"iris", "fraud", "imagenet", "sentiment"}

    def vision_down(request: httpx.Request) -> httpx.Response:
        if services.service_of(request) == "vision":
            raise httpx.ConnectError("refused")
        return services.default(request)

    services.handler = vision_down
    body = client.get("/v1/models", headers=headers).json()
    assert {m["name"] for m in body["models"]} == {"iris", "fraud", "sentiment"}
    assert body["unavailable"] == ["vision"]
    assert_error(client.get("/v1/models"), 401, "unauthorized")


def test_cors_is_off_by_default(client: TestClient) -> None:
    preflight = client.options(
        "/v1/tabular/iris",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in preflight.headers
    plain = client.get("/health/live", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in plain.headers


def test_cors_when_configured(settings: Any, services: FakeServices) -> None:
    from gateway.app import create_app

    configured = settings.model_copy(update={"cors_allow_origins": "https://app.example"})
    with TestClient(create_app(configured, transport=httpx.MockTransport(services))) as cors_client:
        allowed = cors_client.options(
            "/v2/models/iris/infer",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "inference-header-content-length",
            },
        )
        denied = cors_client.options(
            "/v1/tabular/iris",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "inference-header-content-length" in allowed.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-origin" not in denied.headers
