"""Guessing keys is refused: past `AUTH_FAILURE_LIMIT` unknown keys from one address, that address gets
429 with Retry-After before any lookup, on the plain-ASGI proxy routes and the FastAPI routes alike."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from gateway.config import GatewaySettings


@pytest.fixture
def settings(settings: GatewaySettings) -> GatewaySettings:
    return settings.model_copy(update={"auth_failure_limit": 3, "auth_failure_window_seconds": 60})


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v2/models/iris/infer"), ("POST", "/v1/tabular/iris"), ("GET", "/v1/models")],
)
def test_an_address_that_keeps_guessing_is_refused_even_with_a_good_key(
    client: TestClient, all_key: str, method: str, path: str
) -> None:
    def call(key: str) -> tuple[int, str | None]:
        response = client.request(method, path, json={}, headers={"X-API-Key": key})
        return response.status_code, response.headers.get("retry-after")

    assert call(all_key)[0] == 200
    assert [call(f"mg_guess{n}")[0] for n in range(3)] == [401, 401, 401]
    status, retry_after = call("mg_guess3")
    assert status == 429
    assert retry_after is not None and int(retry_after) >= 1
    assert call(all_key)[0] == 429


def test_a_missing_key_is_not_a_guess(client: TestClient, all_key: str) -> None:
    for _ in range(5):
        assert client.post("/v2/models/iris/infer", json={}).status_code == 401
    assert client.post("/v2/models/iris/infer", json={}, headers={"X-API-Key": all_key}).status_code == 200
