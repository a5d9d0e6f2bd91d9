"""The health router (readiness verdicts, `/metrics` on or off) and the shared, kept readiness check."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from modelgate_core.errors import install_error_handlers
from modelgate_core.gunicorn_conf import metrics_address
from modelgate_core.health import Drain, ReadinessReport, SharedCheck, health_router


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_concurrent_callers_share_one_run() -> None:
    runs: list[int] = []

    async def scenario() -> list[str]:
        release = asyncio.Event()

        async def check() -> str:
            runs.append(1)
            await release.wait()
            return "ready"

        shared = SharedCheck(check, ttl_seconds=0)
        waiting: list[int] = []
        all_waiting = asyncio.Event()

        async def caller(i: int) -> str:
            waiting.append(i)
            if len(waiting) == 10:
                all_waiting.set()
            return await shared()  # nothing suspends between here and the wait inside

        tasks = [asyncio.create_task(caller(i)) for i in range(10)]
        await all_waiting.wait()  # wakes once the last caller waits too
        release.set()
        return await asyncio.gather(*tasks)

    assert asyncio.run(scenario()) == ["ready"] * 10
    assert len(runs) == 1


def test_a_caller_that_goes_away_does_not_cancel_the_others_run() -> None:
    runs: list[int] = []

    async def scenario() -> str:
        release, started = asyncio.Event(), asyncio.Event()

        async def check() -> str:
            runs.append(1)
            started.set()
            await release.wait()
            return "ready"

        shared = SharedCheck(check, ttl_seconds=0)
        joined = asyncio.Event()

        async def join() -> str:
            joined.set()
            return await shared()  # nothing suspends between here and the wait inside

        first = asyncio.create_task(shared())
        await started.wait()
        second = asyncio.create_task(join())
        await joined.wait()
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        release.set()
        return await second

    assert asyncio.run(scenario()) == "ready"
    assert len(runs) == 1


def test_the_result_is_kept_for_the_ttl_and_a_failure_is_not() -> None:
    clock = Clock()
    answers = iter([RuntimeError("redis timed out"), "first", "second"])

    async def check() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def scenario() -> list[str]:
        shared = SharedCheck(check, ttl_seconds=1.0, clock=clock)
        with pytest.raises(RuntimeError):
            await shared()
        seen = [await shared()]  # the failure was not kept: asked again
        clock.now += 0.9
        seen.append(await shared())  # kept
        clock.now += 0.2
        seen.append(await shared())  # past the TTL: asked again
        return seen

    assert asyncio.run(scenario()) == ["first", "first", "second"]


def app_with(
    readiness: ReadinessReport | Mapping[str, str], drain: Drain | None = None, **kw: bool
) -> TestClient:
    async def check() -> ReadinessReport | Mapping[str, str]:
        return readiness

    app = FastAPI()
    install_error_handlers(app)
    app.include_router(health_router(check, drain, **kw))
    return TestClient(app)


def test_a_report_decides_and_its_body_names_every_component() -> None:
    degraded = ReadinessReport(True, {"a": "ready", "b": "unreachable"})
    response = app_with(degraded).get("/health/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "degraded", "checks": {"a": "ready", "b": "unreachable"}}
    # A plain mapping needs every component: the services' rule.
    refused = app_with({"a": "ready", "b": "unreachable"}).get("/health/ready")
    assert refused.status_code == 503
    assert refused.json()["error"]["details"] == [{"component": "b", "status": "unreachable"}]


def test_draining_overrides_a_ready_report() -> None:
    drain = Drain()
    drain.draining = True
    response = app_with(ReadinessReport(True, {"a": "ready"}), drain).get("/health/ready")
    assert response.status_code == 503
    assert response.json()["error"]["details"] == [{"component": "process", "status": "draining"}]


def test_metrics_leave_the_public_port_when_metrics_port_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("METRICS_PORT", raising=False)
    public = app_with({}).get("/metrics")
    assert public.status_code == 200 and public.headers["content-type"].startswith("text/plain")
    monkeypatch.setenv("METRICS_PORT", "9100")
    gone = app_with({}).get("/metrics")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"
    assert app_with({}, serve_metrics=True).get("/metrics").status_code == 200


@pytest.mark.parametrize(
    ("bind", "address"),
    [
        ("127.0.0.1:8000", "127.0.0.1"),
        ("0.0.0.0:8000", "0.0.0.0"),
        ("[::1]:8000", "::1"),
        ("8000", "0.0.0.0"),
        ("unix:/run/modelgate.sock", "127.0.0.1"),
    ],
)
def test_the_metrics_port_listens_where_the_public_port_does(bind: str, address: str) -> None:
    assert metrics_address(bind) == address
