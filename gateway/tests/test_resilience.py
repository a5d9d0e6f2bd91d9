"""Circuit breaker, retries on refused connections, and spreading over replicas."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from gateway.resilience import CircuitBreaker, ReplicaResolver, RetryBudget

IRIS = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def test_breaker_opens_probes_and_closes(monkeypatch: pytest.MonkeyPatch) -> None:
    breaker = CircuitBreaker("x", failure_threshold=3, reset_seconds=10)
    for _ in range(3):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state == "open" and not breaker.allow()
    later = time.monotonic() + 11
    monkeypatch.setattr(time, "monotonic", lambda: later)
    assert breaker.allow() and breaker.state == "half_open"
    assert not breaker.allow()  # one probe at a time
    breaker.record_success()
    assert breaker.state == "closed" and breaker.allow()


def test_failed_probe_reopens() -> None:
    breaker = CircuitBreaker("x", failure_threshold=1, reset_seconds=0)
    breaker.record_failure()
    assert breaker.allow() and breaker.state == "half_open"
    breaker.record_failure()
    assert breaker.state == "open"


def test_retry_budget_is_bounded() -> None:
    budget = RetryBudget(ratio=0.2, floor=2, tokens=2)
    assert budget.withdraw() and budget.withdraw() and not budget.withdraw()
    for _ in range(5):
        budget.deposit()
    assert budget.withdraw() and not budget.withdraw()


def test_open_circuit_answers_503_without_calling(client: TestClient, all_key: str, services: Any) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        if request.url.host == "tabular":
            raise httpx.ReadTimeout("slow")
        return services.default(request)

    services.handler = refuse
    headers = {"X-API-Key": all_key}
    for _ in range(5):
        assert client.post("/v1/tabular/iris", json=IRIS, headers=headers).status_code == 504
    calls = len([r for r in services.requests if r.url.host == "tabular"])
    response = client.post("/v1/tabular/iris", json=IRIS, headers=headers)
    assert response.status_code == 503 and "circuit open" in response.json()["error"]["message"]
    assert len([r for r in services.requests if r.url.host == "tabular"]) == calls
    # Other upstreams are unaffected, and readiness names the open circuit.
    assert client.post("/v1/nlp/sentiment", json={"text": "ok"}, headers=headers).status_code == 200
    services.handler = services.default
    ready = client.get("/health/ready").json()["error"]
    assert {"component": "tabular", "status": "circuit open"} in ready["details"]


def test_refused_connection_is_retried(client: TestClient, all_key: str, services: Any) -> None:
    attempts = {"n": 0}

    def flaky(request: httpx.Request) -> httpx.Response:
        attempts["n"] += 1
        if attempts["n"] == 1:
            raise httpx.ConnectError("refused")
        return httpx.Response(200, json={"ok": True})

    services.handler = flaky
    response = client.post("/v1/tabular/iris", json=IRIS, headers={"X-API-Key": all_key})
    assert response.status_code == 200 and attempts["n"] == 2


def test_resolver_spreads_over_replicas(monkeypatch: pytest.MonkeyPatch) -> None:
    async def fake_getaddrinfo(host: str, port: int, **_: Any) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in ("10.0.0.7", "10.0.0.8")]

    async def scenario() -> list[str]:
        loop = asyncio.get_running_loop()
        monkeypatch.setattr(loop, "getaddrinfo", fake_getaddrinfo)
        resolver = ReplicaResolver("nlp-service", 8000)
        return [await resolver.pick() for _ in range(4)]

    picks = asyncio.run(scenario())
    assert sorted(picks) == ["10.0.0.7", "10.0.0.7", "10.0.0.8", "10.0.0.8"]
    assert picks[0] != picks[1]


def test_literal_hosts_are_not_resolved() -> None:
    assert asyncio.run(ReplicaResolver("127.0.0.1", 8001).pick()) == "127.0.0.1"


def test_open_circuit_is_not_asked_for_its_index_but_keeps_its_models(
    client: TestClient, all_key: str, services: Any
) -> None:
    directory = client.app.state.gateway.directory  # type: ignore[attr-defined]
    now = [100.0]
    directory.clock = lambda: now[0]

    def slow_tabular(request: httpx.Request) -> httpx.Response:
        if request.url.host == "tabular" and request.url.path.endswith("/infer"):
            raise httpx.ReadTimeout("slow")
        return services.default(request)

    services.handler = slow_tabular
    headers = {"X-API-Key": all_key}
    infer = {"inputs": [{"name": "input", "shape": [1], "datatype": "FP64", "data": [1.0]}]}
    for _ in range(5):
        assert client.post("/v2/models/iris/infer", json=infer, headers=headers).status_code == 504

    def tabular_index_reads() -> int:
        return len([r for r in services.sent("/v2/repository/index") if r.url.host == "tabular"])

    reads = tabular_index_reads()
    now[0] += 3  # past the directory's TTL: the next request re-reads every index but tabular's
    response = client.post("/v2/models/iris/infer", json=infer, headers=headers)
    assert response.status_code == 503 and "circuit open" in response.json()["error"]
    assert tabular_index_reads() == reads
    assert client.get("/v2/models/sentiment", headers=headers).status_code == 200
