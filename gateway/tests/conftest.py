"""Gateway unit tests: the real gateway app in-process, the services replaced by an httpx MockTransport.

`FakeServices` plays the three model services: each has a repository index (which the gateway's model
directory reads), its `/v1/models` catalogue, an optional OpenAPI document, and answers anything else
with an echo of what it was sent; a test swaps `handler` to make one misbehave.
"""

from __future__ import annotations

import asyncio
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
        tabular_url="http://tabular:8001",
        vision_url="http://vision:8002",
        nlp_url="http://nlp:8003",
        max_upload_bytes=64 * 1024,
        max_json_bytes=16 * 1024,
        log_json=True,
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
