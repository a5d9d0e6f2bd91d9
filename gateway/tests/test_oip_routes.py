"""The Open Inference Protocol through the gateway: its own /v2 endpoints, model calls forwarded to the
service the model directory names, scopes, the binary extension, errors in OIP's shape, metrics."""

from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from gateway.app import create_app

FakeServices = Any  # conftest.FakeServices (conftest is not importable from here)

INFER = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}


def assert_oip_error(response: httpx.Response, status: int, code: str) -> str:
    """OIP's error shape: `{"error": "<message>", "code", "request_id"}`; returns the message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body["error"], str) and body["error"], body
    assert body["code"] == code
    assert body["request_id"] == response.headers["x-request-id"]
    return body["error"]  # type: ignore[no-any-return]


def model_requests(model: str, version: str, status: str) -> float:
    labels = {"model": model, "version": version, "status": status}
    return REGISTRY.get_sample_value("modelgate_model_requests_total", labels) or 0.0


def test_server_endpoints_need_no_key(client: TestClient, services: FakeServices) -> None:
    assert client.get("/v2").json() == {
        "name": "modelgate",
        "version": "1.0.0",
        "extensions": ["binary_tensor_data", "model_repository"],
    }
    assert client.get("/v2/health/live").json() == {"live": True}
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 200 and ready.json() == {"ready": True}

    def nlp_down(request: httpx.Request) -> httpx.Response:
        if services.service_of(request) == "nlp":
            raise httpx.ConnectError("refused")
        return services.default(request)

    services.handler = nlp_down  # the gateway still serves the others: ready (test_readiness.py)
    assert client.get("/v2/health/ready").json() == {"ready": True}


@pytest.mark.parametrize(
    ("method", "path", "service"),
    [
        ("GET", "/v2/models/iris", "tabular"),
        ("GET", "/v2/models/iris/versions/1", "tabular"),
        ("GET", "/v2/models/sentiment/ready", "nlp"),
        ("GET", "/v2/models/imagenet/versions/1/ready", "vision"),
        ("POST", "/v2/models/fraud/infer", "tabular"),
        ("POST", "/v2/models/sentiment/versions/1/infer", "nlp"),
        ("POST", "/v1/models/iris:predict", "tabular"),
    ],
)
def test_model_calls_go_to_the_service_holding_the_model(
    client: TestClient, all_key: str, services: FakeServices, method: str, path: str, service: str
) -> None:
    body = INFER if method == "POST" else None
    response = client.request(method, path, json=body, headers={"X-API-Key": all_key})
    assert response.status_code == 200, response.text
    assert response.json() == {"ok": True, "service": service, "path": path}
    sent = services.requests[-1]
    assert "x-api-key" not in sent.headers
    if body is not None:
        assert json.loads(sent.content) == body


def test_predict_route_really_matches_the_colon_path(client: TestClient, make_key: Any) -> None:
    key = make_key("iris-only", ("model:iris",))
    headers = {"X-API-Key": key}
    assert (
        client.post("/v1/models/iris:predict", json={"instances": [[1, 2, 3, 4]]}, headers=headers).json()[
            "path"
        ]
        == "/v1/models/iris:predict"
    )
    # Not a /v2 path: errors in the common shape.
    unknown = client.post("/v1/models/nope:predict", json={"instances": [[1]]}, headers=headers)
    assert unknown.status_code == 404 and unknown.json()["error"]["message"].startswith(
        "Unknown model 'nope'"
    )
    assert client.post("/v1/models/iris:explain", json={}, headers=headers).status_code == 404


def test_model_scope_allows_that_model_only(
    client: TestClient, make_key: Any, services: FakeServices
) -> None:
    headers = {"X-API-Key": make_key("iris-only", ("model:iris",))}
    assert client.post("/v2/models/iris/infer", json=INFER, headers=headers).status_code == 200
    assert client.get("/v2/models/iris/versions/1/ready", headers=headers).status_code == 200
    calls = len(services.requests)
    message = assert_oip_error(
        client.post("/v2/models/fraud/infer", json=INFER, headers=headers), 403, "forbidden"
    )
    assert "'tabular' or 'model:fraud'" in message
    assert len(services.requests) == calls  # refused before costing a hop
    assert_oip_error(client.post("/v2/repository/index", headers=headers), 403, "forbidden")


def test_service_scope_allows_its_models(client: TestClient, tabular_key: str) -> None:
    headers = {"X-API-Key": tabular_key}
    assert client.post("/v2/models/fraud/infer", json=INFER, headers=headers).status_code == 200
    assert_oip_error(client.get("/v2/models/sentiment", headers=headers), 403, "forbidden")


def test_admin_scope_is_only_the_repository(client: TestClient, make_key: Any) -> None:
    headers = {"X-API-Key": make_key("ops", ("admin",))}
    assert client.post("/v2/repository/index", headers=headers).status_code == 200
    assert_oip_error(client.post("/v2/models/iris/infer", json=INFER, headers=headers), 403, "forbidden")


def test_missing_and_unknown_key_on_v2_are_oip_401(client: TestClient, all_key: str) -> None:
    response = client.post("/v2/models/iris/infer", json=INFER)
    assert_oip_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"
    assert_oip_error(client.get("/v2/models/iris", headers={"X-API-Key": all_key + "x"}), 401, "unauthorized")


def test_rate_limit_on_v2_is_oip_429(settings: Any, services: FakeServices, make_key: Any) -> None:
    limited = settings.model_copy(update={"rate_limit_per_second": 0.001, "rate_limit_burst": 2})
    key = make_key("limited", ("*",))
    with TestClient(create_app(limited, transport=httpx.MockTransport(services))) as client:
        codes = [client.get("/v2/models/iris", headers={"X-API-Key": key}) for _ in range(3)]
    assert [r.status_code for r in codes] == [200, 200, 429]
    assert_oip_error(codes[2], 429, "rate_limited")
    assert int(codes[2].headers["retry-after"]) >= 1


def test_unknown_model_and_version_are_oip_404(
    client: TestClient, all_key: str, services: FakeServices
) -> None:
    headers = {"X-API-Key": all_key}
    assert assert_oip_error(client.get("/v2/models/nope", headers=headers), 404, "not_found") == (
        "Unknown model 'nope'"
    )
    message = assert_oip_error(
        client.post("/v2/models/iris/versions/9/infer", json=INFER, headers=headers), 404, "not_found"
    )
    assert message == "Unknown version '9' of model 'iris'"
    assert [r for r in services.requests if "/v2/models/" in r.url.path] == []


def test_a_model_added_to_a_service_is_routable_on_the_next_request(
    client: TestClient, all_key: str, services: FakeServices
) -> None:
    headers = {"X-API-Key": all_key}
    assert client.get("/v2/models/iris", headers=headers).status_code == 200
    services.index["nlp"].append({"name": "toxicity", "version": "3", "state": "READY", "reason": ""})
    response = client.post("/v2/models/toxicity/versions/3/infer", json=INFER, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["service"] == "nlp"


def test_directory_follows_the_index_after_its_ttl(
    client: TestClient, all_key: str, services: FakeServices
) -> None:
    directory = client.app.state.gateway.directory  # type: ignore[attr-defined]
    now = [5000.0]
    directory.clock = lambda: now[0]
    headers = {"X-API-Key": all_key}
    assert client.get("/v2/models/fraud", headers=headers).json()["service"] == "tabular"
    services.index["tabular"] = [e for e in services.index["tabular"] if e["name"] != "fraud"]
    services.index["nlp"].append({"name": "fraud", "version": "2", "state": "READY", "reason": ""})
    assert client.get("/v2/models/fraud", headers=headers).json()["service"] == "tabular"  # within the TTL
    now[0] += 2.0
    # Stale: this answer comes from the current view while the re-read runs in the background.
    assert client.get("/v2/models/fraud", headers=headers).json()["service"] == "tabular"
    client.portal.call(directory.refresh)  # type: ignore[union-attr]  # join that re-read
    assert client.get("/v2/models/fraud", headers=headers).json()["service"] == "nlp"


def test_a_name_claimed_twice_is_409_naming_both(
    client: TestClient, all_key: str, services: FakeServices
) -> None:
    services.index["vision"].append({"name": "iris", "version": "1", "state": "READY", "reason": ""})
    message = assert_oip_error(client.get("/v2/models/iris", headers={"X-API-Key": all_key}), 409, "conflict")
    assert "tabular, vision" in message
    assert client.get("/v2/models/fraud", headers={"X-API-Key": all_key}).status_code == 200


def test_binary_infer_passes_through_byte_for_byte(
    client: TestClient, all_key: str, services: FakeServices
) -> None:
    tensor = triton.InferInput("input", [2, 4], "FP32")
    tensor.set_data_from_numpy(np.arange(8, dtype=np.float32).reshape(2, 4), binary_data=True)
    request_body, json_size = triton.InferenceServerClient.generate_request_body(
        [tensor], outputs=[triton.InferRequestedOutput("probabilities", binary_data=True)]
    )
    assert json_size is not None and json_size < len(request_body)
    answer_header = json.dumps(
        {
            "model_name": "iris",
            "outputs": [
                {
                    "name": "probabilities",
                    "datatype": "FP32",
                    "shape": [2],
                    "parameters": {"binary_data_size": 8},
                }
            ],
        }
    ).encode()
    raw_output = np.array([0.25, 0.75], dtype=np.float32).tobytes()

    def binary(request: httpx.Request) -> httpx.Response:
        if request.url.path != "/v2/models/iris/infer":
            return services.default(request)
        return httpx.Response(
            200,
            content=answer_header + raw_output,
            headers={
                "content-type": "application/octet-stream",
                "inference-header-content-length": str(len(answer_header)),
            },
        )

    services.handler = binary
    response = client.post(
        "/v2/models/iris/infer",
        content=request_body,
        headers={
            "X-API-Key": all_key,
            "content-type": "application/octet-stream",
            "Inference-Header-Content-Length": str(json_size),
        },
    )
    assert response.status_code == 200, response.text
    sent = services.sent("/v2/models/iris/infer")[-1]
    assert sent.content == request_body
    assert sent.headers["inference-header-content-length"] == str(json_size)
    assert sent.headers["content-type"] == "application/octet-stream"
    assert response.content == answer_header + raw_output
    assert response.headers["inference-header-content-length"] == str(len(answer_header))
    assert response.headers["content-type"] == "application/octet-stream"
    parsed = triton.InferenceServerClient.parse_response_body(
        response.content, header_length=int(response.headers["inference-header-content-length"])
    )
    assert parsed.as_numpy("probabilities").tolist() == [0.25, 0.75]


def test_binary_answer_without_its_length_header_is_502(
    client: TestClient, all_key: str, services: FakeServices
) -> None:
    services.handler = lambda request: (
        httpx.Response(200, content=b"\x00" * 8, headers={"content-type": "application/octet-stream"})
        if request.url.path.endswith("/infer")
        else services.default(request)
    )
    response = client.post("/v2/models/iris/infer", json=INFER, headers={"X-API-Key": all_key})
    assert_oip_error(response, 502, "bad_gateway")


@pytest.mark.parametrize("status", [400, 404, 409, 503])
def test_service_oip_errors_pass_through(
    client: TestClient, all_key: str, services: FakeServices, status: int
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        if not request.url.path.startswith("/v2/models/"):
            return services.default(request)
        return httpx.Response(
            status, json={"error": "input 'x' is not known", "code": "c", "request_id": "r"}
        )

    services.handler = refuse
    response = client.post("/v2/models/iris/infer", json=INFER, headers={"X-API-Key": all_key})
    assert response.status_code == status
    assert response.json()["error"] == "input 'x' is not known"


def test_upstream_failure_on_v2_is_oip_shaped(
    client: TestClient, all_key: str, services: FakeServices
) -> None:
    def down(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/v2/models/"):
            raise httpx.ReadTimeout("slow")
        return services.default(request)

    services.handler = down
    message = assert_oip_error(
        client.get("/v2/models/sentiment", headers={"X-API-Key": all_key}), 504, "upstream_timeout"
    )
    assert "nlp" in message


def test_model_requests_are_counted_by_model_version_and_status(
    client: TestClient, all_key: str, services: FakeServices
) -> None:
    headers = {"X-API-Key": all_key}
    before = (model_requests("iris", "default", "200"), model_requests("iris", "1", "200"))
    before_503 = model_requests("sentiment", "default", "503")
    client.post("/v2/models/iris/infer", json=INFER, headers=headers)
    client.get("/v2/models/iris/versions/1", headers=headers)
    client.get("/v2/models/nope", headers=headers)
    services.handler = lambda request: (
        httpx.Response(503, json={"error": "not loaded", "code": "service_unavailable"})
        if request.url.path.startswith("/v2/models/sentiment")
        else services.default(request)
    )
    client.get("/v2/models/sentiment/ready", headers=headers)
    assert model_requests("iris", "default", "200") == before[0] + 1
    assert model_requests("iris", "1", "200") == before[1] + 1
    assert model_requests("sentiment", "default", "503") == before_503 + 1
    assert (
        REGISTRY.get_sample_value(
            "modelgate_model_requests_total", {"model": "nope", "version": "default", "status": "404"}
        )
        is None
    )  # made-up names never become label values


def test_body_limits_follow_the_path(client: TestClient, all_key: str, services: FakeServices) -> None:
    headers = {"X-API-Key": all_key, "content-type": "application/json"}
    tensor_sized = (
        b'{"inputs": [], "pad": "' + b"x" * 40_000 + b'"}'
    )  # over the JSON limit, under the upload one
    assert client.post("/v2/models/iris/infer", content=tensor_sized, headers=headers).status_code == 200
    assert (
        client.post("/v2/models/iris/versions/1/infer", content=tensor_sized, headers=headers).status_code
        == 200
    )
    assert client.post("/v1/models/iris:predict", content=tensor_sized, headers=headers).status_code == 200
    too_big = b"x" * 70_000
    assert_oip_error(
        client.post("/v2/models/iris/infer", content=too_big, headers=headers), 413, "payload_too_large"
    )
    assert_oip_error(
        client.post("/v2/repository/index", content=tensor_sized, headers=headers), 413, "payload_too_large"
    )
    assert_oip_error(
        client.post("/v2/repository/models/iris/load", content=tensor_sized, headers=headers),
        413,
        "payload_too_large",
    )


def test_repository_index_merges_every_service(
    client: TestClient, all_key: str, services: FakeServices
) -> None:
    services.index["vision"].append(
        {"name": "resnet", "version": "2", "state": "UNAVAILABLE", "reason": "no file"}
    )
    headers = {"X-API-Key": all_key}
    everything = client.post("/v2/repository/index", headers=headers)  # no body, as tritonclient sends it
    assert everything.status_code == 200
    assert [(e["name"], e["state"]) for e in everything.json()] == [
        ("fraud", "READY"),
        ("imagenet", "READY"),
        ("iris", "READY"),
        ("resnet", "UNAVAILABLE"),
        ("sentiment", "READY"),
    ]
    assert everything.json()[3] == {
        "name": "resnet",
        "version": "2",
        "state": "UNAVAILABLE",
        "reason": "no file",
    }
    ready = client.post("/v2/repository/index", json={"ready": True}, headers=headers).json()
    assert "resnet" not in {e["name"] for e in ready} and len(ready) == 4
    assert len(client.post("/v2/repository/index", json={}, headers=headers).json()) == 5


@pytest.mark.parametrize("body", [b"{", b"[]", b'{"ready": "yes"}', b'{"ready": true, "x": 1}'])
def test_repository_index_refuses_a_bad_body(client: TestClient, all_key: str, body: bytes) -> None:
    response = client.post(
        "/v2/repository/index",
        content=body,
        headers={"X-API-Key": all_key, "content-type": "application/json"},
    )
    assert_oip_error(response, 400, "bad_request")


def test_load_goes_to_the_owner_and_the_directory_follows(
    client: TestClient, all_key: str, services: FakeServices
) -> None:
    headers = {"X-API-Key": all_key}

    def loader(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/repository/models/sentiment/load":
            services.index["nlp"] = [{"name": "sentiment", "version": "2", "state": "READY", "reason": ""}]
            return httpx.Response(200, json={"name": "sentiment", "versions": services.index["nlp"]})
        return services.default(request)

    services.handler = loader
    assert_oip_error(
        client.post("/v2/models/sentiment/versions/2/infer", json=INFER, headers=headers), 404, "not_found"
    )
    load_body = {"parameters": {"version": "2"}}
    response = client.post("/v2/repository/models/sentiment/load", json=load_body, headers=headers)
    assert response.status_code == 200 and response.json()["versions"][0]["version"] == "2"
    sent = services.sent("/v2/repository/models/sentiment/load")[-1]
    assert services.service_of(sent) == "nlp" and json.loads(sent.content) == load_body
    # Re-read as part of the load: the new version routes at once, with no wait for a TTL or miss.
    assert (
        client.post("/v2/models/sentiment/versions/2/infer", json=INFER, headers=headers).status_code == 200
    )


def test_unload_of_an_unknown_model_is_404(client: TestClient, all_key: str, services: FakeServices) -> None:
    message = assert_oip_error(
        client.post("/v2/repository/models/ghost/unload", headers={"X-API-Key": all_key}), 404, "not_found"
    )
    assert message == "Unknown model 'ghost'"
    assert services.sent("/v2/repository/models/ghost/unload") == []


def test_repository_needs_admin(client: TestClient, tabular_key: str, services: FakeServices) -> None:
    headers = {"X-API-Key": tabular_key}
    assert_oip_error(client.post("/v2/repository/models/iris/unload", headers=headers), 403, "forbidden")
    assert services.sent("/v2/repository/models/iris/unload") == []


def test_traffic_calls_go_to_the_service_holding_the_model(
    client: TestClient, all_key: str, services: FakeServices
) -> None:
    headers = {"X-API-Key": all_key}
    body = {"default_version": "1", "canary": {"version": "2", "percent": 10}}
    calls = [
        ("PUT", "/v2/repository/models/sentiment/traffic", body),
        ("GET", "/v2/repository/models/sentiment/traffic", None),
        ("POST", "/v2/repository/models/sentiment/traffic/promote", None),
        ("POST", "/v2/repository/models/sentiment/traffic/rollback", None),
    ]
    for method, path, sent_body in calls:
        response = client.request(method, path, json=sent_body, headers=headers)
        assert response.status_code == 200, (path, response.text)
        (sent,) = [r for r in services.sent(path) if r.method == method]
        assert services.service_of(sent) == "nlp"
        assert (json.loads(sent.content) if sent.content else None) == sent_body


def test_traffic_calls_need_admin(client: TestClient, tabular_key: str, services: FakeServices) -> None:
    headers = {"X-API-Key": tabular_key}
    body = {"default_version": "2"}
    assert_oip_error(
        client.put("/v2/repository/models/iris/traffic", json=body, headers=headers), 403, "forbidden"
    )
    assert_oip_error(
        client.post("/v2/repository/models/iris/traffic/promote", headers=headers), 403, "forbidden"
    )
    assert services.sent("/v2/repository/models/iris/traffic") == []
    assert services.sent("/v2/repository/models/iris/traffic/promote") == []


def test_a_405_lists_every_method_of_the_path(client: TestClient, all_key: str) -> None:
    """GET and PUT of .../traffic are two routes: the Allow header names both, not the first one's."""
    response = client.request("DELETE", "/v2/repository/models/iris/traffic", headers={"X-API-Key": all_key})
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, PUT"
