"""Gateway unit tests: the real gateway app in-process, the services replaced by an httpx MockTransport.

`FakeServices` plays the three model services: each has a repository index (which the gateway's model
directory reads), its `/v1/models` catalogue, an optional OpenAPI document, and answers anything else
with an echo of what it was sent; a test swaps `handler` to make one misbehave. The services are told
apart by port: their addresses are IP literals, so that no unit test ever looks a name up.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.config import GatewaySettings
from gateway.keys import FileKeyStore

Handler = Callable[[httpx.Request], httpx.Response]

SERVICE_PORTS = {8001: "tabular", 8002: "vision", 8003: "nlp"}


def _is_ip_literal(host: object) -> bool:
    """True for what `getaddrinfo` answers without a resolver: an address, or None (the wildcard)."""
    if host is None:
        return True
    text = host.decode() if isinstance(host, bytes) else str(host)
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@pytest.fixture(autouse=True)
def no_dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Fail any unit test that looks a name up (`localhost` included).

    Whether a name resolves depends on the machine (on a compose network `tabular` does), and the
    gateway's replica resolver turns a resolved name into addresses, so such a test would pass or fail
    by where it runs. The lookup fails as an unknown name does, and the test fails at teardown even
    where the code under test takes that failure in its stride.
    """
    looked_up: list[str] = []
    real_getaddrinfo = socket.getaddrinfo

    def guarded(host: bytes | str | None, *args: Any, **kwargs: Any) -> Any:
        if not _is_ip_literal(host):
            looked_up.append(str(host))
            raise socket.gaierror(socket.EAI_NONAME, f"unit tests look no names up, not even {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    yield looked_up
    assert not looked_up, f"this unit test looked names up: {sorted(set(looked_up))}"


def entry(name: str, version: str = "1", state: str = "READY", reason: str = "") -> dict[str, Any]:
    return {"name": name, "version": version, "state": state, "reason": reason}


class FakeServices:
    """Routes upstream requests to a per-test handler and records what the gateway sent."""

    def __init__(self) -> None:
        self.handler: Handler = self.default
        self.requests: list[httpx.Request] = []
        self.index: dict[str, list[dict[str, Any]]] = {
            "tabular": [entry("iris"), entry("fraud")],
            "vision": [entry("imagenet")],
            "nlp": [entry("sentiment")],
        }
        self.documents: dict[str, dict[str, Any]] = {}

    @staticmethod
    def service_of(request: httpx.Request) -> str:
        return SERVICE_PORTS[request.url.port or 0]

    def sent(self, path: str) -> list[httpx.Request]:
        """What the gateway sent to `path`, on any service."""
        return [r for r in self.requests if r.url.path == path]

    def default(self, request: httpx.Request) -> httpx.Response:
        service = self.service_of(request)
        path = request.url.path
        if path == "/health/ready":
            return httpx.Response(200, json={"status": "ready"})
        if path == "/v2/repository/index":
            return httpx.Response(200, json=self.index[service])
        if path == "/v1/models":
            models = [
                {"name": e["name"], "version": e["version"], "metrics": {}} for e in self.index[service]
            ]
            return httpx.Response(200, json={"models": models})
        if path == "/openapi.json":
            if service not in self.documents:
                return httpx.Response(404, json={"error": {"code": "not_found", "message": "no document"}})
            return httpx.Response(200, json=self.documents[service])
        return httpx.Response(200, json={"ok": True, "service": service, "path": path})

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)


@pytest.fixture
def services() -> FakeServices:
    return FakeServices()


@pytest.fixture
def settings(tmp_path: Path) -> GatewaySettings:
    return GatewaySettings(
        api_keys_file=tmp_path / "keys.json",
        tabular_url="http://127.0.0.1:8001",
        vision_url="http://127.0.0.1:8002",
        nlp_url="http://127.0.0.1:8003",
        max_upload_bytes=64 * 1024,
        max_json_bytes=16 * 1024,
        log_json=True,
        # Tests change what the services answer between two readiness calls: no kept verdict.
        readiness_cache_seconds=0,
    )


@pytest.fixture
def client(settings: GatewaySettings, services: FakeServices) -> Iterator[TestClient]:
    app = create_app(settings, transport=httpx.MockTransport(services))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


KeyMaker = Callable[[str, tuple[str, ...]], str]


@pytest.fixture
def make_key(settings: GatewaySettings) -> KeyMaker:
    """Create a key with these scopes in the gateway's key file; returns the key."""

    def create(name: str, scopes: tuple[str, ...]) -> str:
        key, _ = asyncio.run(FileKeyStore(settings.api_keys_file).create(name, scopes))
        return key

    return create


@pytest.fixture
def all_key(make_key: KeyMaker) -> str:
    return make_key("all", ("*",))


@pytest.fixture
def tabular_key(make_key: KeyMaker) -> str:
    return make_key("tab-only", ("tabular",))
