"""The gateway's readiness for a load balancer: ready while it can serve at least one service, each
component's status in the body, one shared and briefly kept check behind `/health/ready` and
`/v2/health/ready`."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.config import GatewaySettings

FakeServices = Any  # conftest.FakeServices (conftest is not importable from here)
SERVICES = ("tabular", "vision", "nlp")


def down(services: FakeServices, *names: str) -> Callable[[httpx.Request], httpx.Response]:
    """A handler under which the named services refuse connections and the others answer."""

    def handler(request: httpx.Request) -> httpx.Response:
        if services.service_of(request) in names:
            raise httpx.ConnectError("refused")
        return services.default(request)

    return handler


def not_ready_error(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "not_ready" and error["request_id"] == response.headers["x-request-id"]
    return error  # type: ignore[no-any-return]


def oip_unavailable(response: httpx.Response) -> str:
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["code"] == "service_unavailable" and isinstance(body["error"], str)
    return body["error"]  # type: ignore[no-any-return]


def readiness_asks(services: FakeServices) -> dict[str, int]:
    """How often each service was asked for its readiness."""
    sent = [services.service_of(r) for r in services.sent("/health/ready")]
    return {name: sent.count(name) for name in SERVICES}


@pytest.fixture
def kept_client(settings: GatewaySettings, services: FakeServices) -> Iterator[TestClient]:
    """The gateway keeping its readiness verdict for a minute (the default is a second)."""
    app = create_app(
        settings.model_copy(update={"readiness_cache_seconds": 60.0}), httpx.MockTransport(services)
    )
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def test_ready_names_every_component(client: TestClient) -> None:
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": dict.fromkeys(SERVICES, "ready")}
    assert client.get("/v2/health/ready").json() == {"ready": True}


def test_one_dead_service_leaves_the_gateway_ready_and_names_it(
    client: TestClient, services: FakeServices
) -> None:
    services.handler = down(services, "nlp")
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "degraded",
        "checks": {"tabular": "ready", "vision": "ready", "nlp": "unreachable"},
    }
    oip = client.get("/v2/health/ready")
    assert oip.status_code == 200 and oip.json() == {"ready": True}
    assert client.get("/health/live").status_code == 200


def test_no_service_left_is_not_ready(client: TestClient, services: FakeServices) -> None:
    services.handler = down(services, *SERVICES)
    error = not_ready_error(client.get("/health/ready"))
    assert error["message"] == "Not ready: nlp, tabular, vision"
    assert error["details"] == [
        {"component": name, "status": "unreachable"} for name in ("nlp", "tabular", "vision")
    ]
    assert oip_unavailable(client.get("/v2/health/ready")) == "Not ready: nlp, tabular, vision"


def test_a_service_not_ready_itself_does_not_count_as_served(
    client: TestClient, services: FakeServices
) -> None:
    def loading(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health/ready" and services.service_of(request) != "vision":
            return httpx.Response(503, json={"error": {"code": "not_ready", "message": "loading"}})
        return down(services, "vision")(request)

    services.handler = loading
    error = not_ready_error(client.get("/health/ready"))
    assert {d["component"]: d["status"] for d in error["details"]} == {
        "nlp": "not ready (HTTP 503)",
        "tabular": "not ready (HTTP 503)",
        "vision": "unreachable",
    }


def test_unreachable_redis_is_reported_but_leaves_the_gateway_ready(
    settings: GatewaySettings, services: FakeServices
) -> None:
    """Redis is every replica's: its outage taking them all out of rotation would not help, and the
    gateway serves the keys it confirmed recently meanwhile."""
    with socket.socket() as sock:  # a port that refuses: bound, never listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        redis_settings = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{port}/0"})
        app = create_app(redis_settings, httpx.MockTransport(services))
        with TestClient(app, raise_server_exceptions=False) as client:
            ready = client.get("/health/ready")
            assert ready.status_code == 200
            assert ready.json() == {
                "status": "degraded",
                "checks": {**dict.fromkeys(SERVICES, "ready"), "redis": "unreachable"},
            }
            assert client.get("/v2/health/ready").json() == {"ready": True}


def test_both_readiness_routes_share_one_kept_check(kept_client: TestClient, services: FakeServices) -> None:
    assert kept_client.get("/health/ready").status_code == 200
    assert kept_client.get("/v2/health/ready").status_code == 200
    assert kept_client.get("/health/ready").status_code == 200
    assert readiness_asks(services) == dict.fromkeys(SERVICES, 1)
    # Kept means kept: a service that died since shows only once the verdict is renewed.
    services.handler = down(services, "nlp")
    assert kept_client.get("/health/ready").json()["status"] == "ready"
    assert readiness_asks(services) == dict.fromkeys(SERVICES, 1)


def test_draining_is_not_ready_at_once_despite_the_kept_check(kept_client: TestClient) -> None:
    assert kept_client.get("/health/ready").status_code == 200
    kept_client.app.state.gateway.drain.draining = True  # type: ignore[attr-defined]
    error = not_ready_error(kept_client.get("/health/ready"))
    assert error["details"] == [{"component": "process", "status": "draining"}]
    assert oip_unavailable(kept_client.get("/v2/health/ready")) == "Not ready: process"
