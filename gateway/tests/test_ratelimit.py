"""Rate limiting: the GCRA arithmetic and what a client sees (429, Retry-After, RateLimit-* headers)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY, generate_latest

from gateway.app import create_app
from gateway.config import GatewaySettings
from gateway.keys import FileKeyStore
from gateway.ratelimit import Limit, MemoryRateLimiter, _decide

IRIS = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def test_gcra_allows_burst_then_refuses_then_refills() -> None:
    limit = Limit(rate=10, burst=3)  # one token every 100 ms
    tat = None
    decisions = []
    for _ in range(4):
        decision, new_tat = _decide(limit, 1000.0, tat)
        decisions.append(decision)
        tat = new_tat if new_tat is not None else tat
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions[:3]] == [2, 1, 0]
    assert decisions[3].retry_after_seconds == pytest.approx(0.1)
    refilled, _ = _decide(limit, 1100.0, tat)
    assert refilled.allowed


def test_remaining_survives_float_rounding() -> None:
    # (now + T) - now is a hair above T at this clock value; the bucket still has burst - 1 tokens left.
    now = 4294880999.7380233
    decision, _ = _decide(Limit(rate=0.001, burst=3), now, None)
    assert decision.allowed and decision.remaining == 2


def test_memory_limiter_keeps_keys_apart() -> None:
    async def scenario() -> list[bool]:
        limiter = MemoryRateLimiter()
        limit = Limit(rate=0.001, burst=2)
        return [(await limiter.hit(k, limit)).allowed for k in ("a", "a", "a", "b")]

    assert asyncio.run(scenario()) == [True, True, False, True]


@pytest.fixture
def limited_client(tmp_path: Path) -> Iterator[tuple[TestClient, str]]:
    settings = GatewaySettings(
        api_keys_file=tmp_path / "keys.json", rate_limit_per_second=0.001, rate_limit_burst=3
    )
    key, _ = asyncio.run(FileKeyStore(settings.api_keys_file).create("limited", ("*",)))
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={"ok": True}))
    with TestClient(create_app(settings, transport=transport)) as client:
        yield client, key


def test_429_with_retry_after_and_ratelimit_headers(limited_client: tuple[TestClient, str]) -> None:
    client, key = limited_client
    responses = [client.post("/v1/tabular/iris", json=IRIS, headers={"X-API-Key": key}) for _ in range(4)]
    assert [r.status_code for r in responses] == [200, 200, 200, 429]
    assert [r.headers["ratelimit-remaining"] for r in responses] == ["2", "1", "0", "0"]
    assert all(r.headers["ratelimit-limit"] == "3" for r in responses)
    refused = responses[3]
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "rate_limited"
    assert "retry-after" not in responses[0].headers


def test_per_key_limit_overrides_default(tmp_path: Path) -> None:
    settings = GatewaySettings(
        api_keys_file=tmp_path / "keys.json", rate_limit_per_second=0.001, rate_limit_burst=1
    )
    key, _ = asyncio.run(FileKeyStore(settings.api_keys_file).create("gold", ("*",), rate=0.001, burst=5))
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={"ok": True}))
    with TestClient(create_app(settings, transport=transport)) as client:
        codes = [
            client.post("/v1/tabular/iris", json=IRIS, headers={"X-API-Key": key}).status_code
            for _ in range(6)
        ]
    assert codes == [200] * 5 + [429]


def test_redis_down_fails_open_or_closed(tmp_path: Path) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={"ok": True}))
    for fail_open, expected in ((True, 200), (False, 503)):
        settings = GatewaySettings(
            api_keys_file=tmp_path / "keys.json", rate_limit_fail_open=fail_open, rate_limit_timeout=0.2
        )
        key, _ = asyncio.run(FileKeyStore(settings.api_keys_file).create(f"k{int(fail_open)}", ("*",)))
        app = create_app(settings, transport=transport)
        with TestClient(app) as client:
            from gateway.ratelimit import RedisRateLimiter

            # Keys come from the file; only the limiter points at a Redis that is not there.
            app.state.gateway.limiter = RedisRateLimiter("redis://127.0.0.1:1/0", 0.2)
            response = client.post("/v1/tabular/iris", json=IRIS, headers={"X-API-Key": key})
        assert response.status_code == expected, response.text


def test_refusals_are_counted_by_limit_never_by_key_name(tmp_path: Path) -> None:
    def refused(limit: str) -> float:
        return REGISTRY.get_sample_value("modelgate_rate_limited_total", {"limit": limit}) or 0.0

    settings = GatewaySettings(
        api_keys_file=tmp_path / "keys.json", rate_limit_per_second=0.001, rate_limit_burst=1
    )
    store = FileKeyStore(settings.api_keys_file)
    plain, _ = asyncio.run(store.create("acme-corp-default", ("*",)))
    gold, _ = asyncio.run(store.create("globex-gold-plan", ("*",), rate=0.001, burst=2))
    before = {"default": refused("default"), "key": refused("key")}
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={"ok": True}))
    with TestClient(create_app(settings, transport=transport)) as client:
        codes = [
            client.post("/v1/tabular/iris", json=IRIS, headers={"X-API-Key": key}).status_code
            for key in (plain, plain, gold, gold, gold)
        ]
    assert codes == [200, 429, 200, 200, 429]
    assert {"default": refused("default"), "key": refused("key")} == {
        "default": before["default"] + 1,
        "key": before["key"] + 1,
    }
    exposition = generate_latest(REGISTRY).decode()
    assert "acme-corp-default" not in exposition and "globex-gold-plan" not in exposition
