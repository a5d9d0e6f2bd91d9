"""Gateway unit tests: the real gateway app in-process, the services replaced by an httpx MockTransport."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.config import GatewaySettings
from gateway.keys import FileKeyStore

Handler = Callable[[httpx.Request], httpx.Response]


class FakeServices:
    """Routes upstream requests to a per-test handler and records what the gateway sent."""

    def __init__(self) -> None:
        self.handler: Handler = self.default
        self.requests: list[httpx.Request] = []

    @staticmethod
    def default(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health/ready":
            return httpx.Response(200, json={"status": "ready"})
        if request.url.path == "/v1/models":
            name = {8001: "iris", 8002: "imagenet", 8003: "sentiment"}[request.url.port or 0]
            return httpx.Response(200, json={"models": [{"name": name, "version": "1", "metrics": {}}]})
        return httpx.Response(200, json={"ok": True, "path": request.url.path})

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
        log_json=True,
    )


@pytest.fixture
def client(settings: GatewaySettings, services: FakeServices) -> Iterator[TestClient]:
    app = create_app(settings, transport=httpx.MockTransport(services))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def make_key(settings: GatewaySettings, name: str, scopes: tuple[str, ...]) -> str:
    key, _ = asyncio.run(FileKeyStore(settings.api_keys_file).create(name, scopes))
    return key


@pytest.fixture
def all_key(settings: GatewaySettings) -> str:
    return make_key(settings, "all", ("*",))


@pytest.fixture
def tabular_key(settings: GatewaySettings) -> str:
    return make_key(settings, "tab-only", ("tabular",))
