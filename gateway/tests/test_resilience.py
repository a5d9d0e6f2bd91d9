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


def open_breaker(threshold: int = 1) -> CircuitBreaker:
    """A breaker that has just opened, and whose next admission is its half-open probe."""
    breaker = CircuitBreaker("x", failure_threshold=threshold, reset_seconds=0)
    for _ in range(threshold):
        admission = breaker.admit()
        assert admission is not None
        admission.failure()
    assert breaker.state == "open"
    return breaker


def test_breaker_opens_probes_and_closes(monkeypatch: pytest.MonkeyPatch) -> None:
    breaker = CircuitBreaker("x", failure_threshold=3, reset_seconds=10)
    for _ in range(3):
        admission = breaker.admit()
        assert admission is not None and not admission.probe
        admission.failure()
    assert breaker.state == "open" and breaker.admit() is None
    later = time.monotonic() + 11
    monkeypatch.setattr(time, "monotonic", lambda: later)
    probe = breaker.admit()
    assert probe is not None and probe.probe and breaker.state == "half_open"
    assert breaker.admit() is None  # one probe at a time
    probe.success()
    assert breaker.state == "closed" and breaker.admit() is not None


def test_failed_probe_reopens() -> None:
    breaker = open_breaker()
    probe = breaker.admit()
    assert probe is not None and breaker.state == "half_open"
    probe.failure()
    assert breaker.state == "open"


def test_probe_cancelled_mid_call_lets_the_next_call_probe() -> None:
    breaker = open_breaker()

    async def scenario() -> None:
        started = asyncio.Event()

        async def call() -> None:
            probe = breaker.admit()
            assert probe is not None and probe.probe
            with probe:
                started.set()
                await asyncio.Event().wait()  # the upstream never answers; the client goes away
                probe.success()

        task = asyncio.create_task(call())
        await started.wait()
        assert breaker.admit() is None  # the probe is out
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert breaker.state == "half_open"
    probe = breaker.admit()
    assert probe is not None and probe.probe
    probe.success()
    assert breaker.state == "closed"


def test_probe_ended_by_an_unrecorded_exception_lets_the_next_call_probe() -> None:
    breaker = open_breaker()
    probe = breaker.admit()
    assert probe is not None
    with pytest.raises(RuntimeError), probe:
        raise RuntimeError("a bug between admission and outcome")
    probe.success()  # after the probe was released: counts for nothing
    assert breaker.state == "half_open"
    assert breaker.admit() is not None


def test_late_success_from_before_the_breaker_opened_does_not_close_it() -> None:
    breaker = CircuitBreaker("x", failure_threshold=2, reset_seconds=3600)
    slow = breaker.admit()
    assert slow is not None
    for _ in range(2):
        admission = breaker.admit()
        assert admission is not None
        admission.failure()
    assert breaker.state == "open"
    slow.success()
    assert breaker.state == "open" and breaker.admit() is None


def test_late_outcomes_do_not_decide_the_half_open_probe() -> None:
    breaker = CircuitBreaker("x", failure_threshold=1, reset_seconds=0)
    before_open = breaker.admit()
    failing = breaker.admit()
    assert before_open is not None and failing is not None
    failing.failure()
    probe = breaker.admit()
    assert probe is not None and breaker.state == "half_open"
    before_open.success()
    assert breaker.state == "half_open" and breaker.admit() is None  # still the probe's to decide
    probe.failure()
    assert breaker.state == "open"


def test_late_failure_from_before_the_breaker_closed_does_not_count() -> None:
    breaker = CircuitBreaker("x", failure_threshold=1, reset_seconds=0)
    before_open = breaker.admit()
    failing = breaker.admit()
    assert before_open is not None and failing is not None
    failing.failure()
    probe = breaker.admit()
    assert probe is not None
    probe.success()
    assert breaker.state == "closed"
    before_open.failure()  # a threshold of one: counted, this would re-open it
    assert breaker.state == "closed"


def test_probe_that_raised_unmapped_error_does_not_wedge_the_gateway(
    client: TestClient, all_key: str, services: Any
) -> None:
    """Through the real caller (UpstreamClient): an exception the client does not map, during the
    half-open probe, must not leave the circuit refusing every later call."""
    breaker = client.app.state.gateway.upstreams["tabular"].breaker  # type: ignore[attr-defined]
    headers = {"X-API-Key": all_key}

    def tabular(error: Exception) -> Any:
        def handler(request: httpx.Request) -> httpx.Response:
            if services.service_of(request) == "tabular":
                raise error
            return services.default(request)

        return handler

    services.handler = tabular(httpx.ReadTimeout("slow"))
    for _ in range(breaker.failure_threshold):
        assert client.post("/v1/tabular/iris", json=IRIS, headers=headers).status_code == 504
    assert breaker.state == "open"
    breaker.reset_seconds = 0
    services.handler = tabular(RuntimeError("transport bug"))
    assert client.post("/v1/tabular/iris", json=IRIS, headers=headers).status_code == 500
    services.handler = services.default
    assert client.post("/v1/tabular/iris", json=IRIS, headers=headers).status_code == 200
    assert breaker.state == "closed"


def test_retry_budget_is_bounded() -> None:
    budget = RetryBudget(ratio=0.2, floor=2, tokens=2)
    assert budget.withdraw() and budget.withdraw() and not budget.withdraw()
    for _ in range(5):
        budget.deposit()
    assert budget.withdraw() and not budget.withdraw()


def test_open_circuit_answers_503_without_calling(client: TestClient, all_key: str, services: Any) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        if services.service_of(request) == "tabular":
            raise httpx.ReadTimeout("slow")
        return services.default(request)

    services.handler = refuse
    headers = {"X-API-Key": all_key}
    for _ in range(5):
        assert client.post("/v1/tabular/iris", json=IRIS, headers=headers).status_code == 504
    calls = len([r for r in services.requests if services.service_of(r) == "tabular"])
    response = client.post("/v1/tabular/iris", json=IRIS, headers=headers)
    assert response.status_code == 503 and "circuit open" in response.json()["error"]["message"]
    assert len([r for r in services.requests if services.service_of(r) == "tabular"]) == calls
    # Other upstreams are unaffected, and readiness names the open circuit.
    assert client.post("/v1/nlp/sentiment", json={"text": "ok"}, headers=headers).status_code == 200
    services.handler = services.default
    ready = client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "degraded"
    assert ready.json()["checks"]["tabular"] == "circuit open"


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
        if services.service_of(request) == "tabular" and request.url.path.endswith("/infer"):
            raise httpx.ReadTimeout("slow")
        return services.default(request)

    services.handler = slow_tabular
    headers = {"X-API-Key": all_key}
    infer = {"inputs": [{"name": "input", "shape": [1], "datatype": "FP64", "data": [1.0]}]}
    for _ in range(5):
        assert client.post("/v2/models/iris/infer", json=infer, headers=headers).status_code == 504

    def tabular_index_reads() -> int:
        return len([r for r in services.sent("/v2/repository/index") if services.service_of(r) == "tabular"])

    reads = tabular_index_reads()
    now[0] += 3  # past the directory's TTL: the next request re-reads every index but tabular's
    response = client.post("/v2/models/iris/infer", json=infer, headers=headers)
    assert response.status_code == 503 and "circuit open" in response.json()["error"]
    assert tabular_index_reads() == reads
    assert client.get("/v2/models/sentiment", headers=headers).status_code == 200
