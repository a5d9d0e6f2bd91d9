"""Liveness, readiness and metrics endpoints, the same in every process."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any, Generic, TypeVar

import orjson
from fastapi import APIRouter
from starlette.responses import Response

from modelgate_core.config import CommonSettings
from modelgate_core.errors import error_response
from modelgate_core.metrics import render_metrics

T = TypeVar("T")

logger = logging.getLogger("modelgate.lifecycle")


@dataclass(frozen=True, slots=True)
class ReadinessReport:
    """A readiness verdict with every component's status ("ready" or why not).

    The verdict is the caller's rule: a process may be ready with a component down (the gateway serves
    the services that are up), and the body then still names what is down.
    """

    ready: bool
    checks: Mapping[str, str]

    @classmethod
    def requiring_all(cls, checks: Mapping[str, str]) -> ReadinessReport:
        """Ready only when every component is."""
        return cls(all(status == "ready" for status in checks.values()), checks)

    def not_ready(self) -> list[str]:
        """The components that are not ready, sorted."""
        return sorted(name for name, status in self.checks.items() if status != "ready")

    def draining(self) -> ReadinessReport:
        """This report for a process that has been told to stop: never ready."""
        return ReadinessReport(False, {**self.checks, "process": "draining"})


# A readiness check returns component name -> status, ready only when all are; or a report with its
# own verdict.
ReadinessCheck = Callable[[], Awaitable[Mapping[str, str] | ReadinessReport]]


class SharedCheck(Generic[T]):
    """Runs an async check at most once per `ttl_seconds`, and once at a time: callers that come while
    it runs wait for that run instead of starting their own.

    What the check reaches (other services, Redis) then sees a bounded load however many clients ask.
    A caller that goes away does not cancel the run the others wait for; a run that raises is not kept.
    """

    def __init__(
        self,
        check: Callable[[], Awaitable[T]],
        ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._check = check
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._value: tuple[T, float] | None = None  # (result, when it was taken)
        self._running: asyncio.Future[T] | None = None

    async def __call__(self) -> T:
        if self._value is not None and self._clock() - self._value[1] < self.ttl_seconds:
            return self._value[0]
        # A run left behind by a loop that has since closed (a test client's) can never finish here.
        if self._running is None or self._running.get_loop() is not asyncio.get_running_loop():
            self._running = asyncio.ensure_future(self._run())
            # Every caller may have gone away: the outcome is then nobody's, and not an unretrieved error.
            self._running.add_done_callback(lambda run: run.cancelled() or run.exception())
        return await asyncio.shield(self._running)

    async def _run(self) -> T:
        try:
            value = await self._check()
            self._value = (value, self._clock())
            return value
        finally:
            if self._running is asyncio.current_task():
                self._running = None


class Drain:
    """Turns readiness to 503 as soon as the process is told to stop (SIGTERM), while the server
    finishes its in-flight requests, so load balancers stop sending new ones first.

    With `delay_seconds`, the server keeps accepting and answering new requests that long after the
    SIGTERM (readiness 503 all along) before its graceful shutdown starts: a load balancer only learns
    of the 503 at its next readiness probe, and until then it still sends requests, which would
    otherwise find the port closed. A second SIGTERM starts the shutdown at once.
    """

    def __init__(self, delay_seconds: float = 0.0) -> None:
        self.draining = False
        self.delay_seconds = delay_seconds

    def watch_sigterm(self) -> None:
        """Chain onto the current SIGTERM handler (Uvicorn's graceful shutdown); call in the lifespan."""
        if threading.current_thread() is not threading.main_thread():
            return  # signals only reach the main thread (in-process test clients run elsewhere)
        previous = signal.getsignal(signal.SIGTERM)
        loop = asyncio.get_running_loop()

        def shut_down(signum: int, frame: FrameType | None) -> None:
            if callable(previous):
                previous(signum, frame)

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            first = not self.draining
            self.draining = True
            if first and self.delay_seconds > 0:
                logger.info(
                    "SIGTERM received: readiness is 503, still serving before draining",
                    extra={"drain_seconds": self.delay_seconds},
                )
                loop.call_later(self.delay_seconds, shut_down, signum, frame)
                return
            logger.info("SIGTERM received: draining in-flight requests")
            shut_down(signum, frame)

        signal.signal(signal.SIGTERM, on_sigterm)


def health_router(
    readiness: ReadinessCheck, drain: Drain | None = None, *, serve_metrics: bool | None = None
) -> APIRouter:
    """`/health/live`, `/health/ready` and `/metrics`.

    Readiness is 200 with every component's status while the process is ready (`"status": "ready"`,
    or `"degraded"` when a component it can do without is down), and 503 naming what is not ready
    otherwise, or at once when the process drains. `/metrics` is left out (404) when `serve_metrics` is
    false; by default, when `METRICS_PORT` is set: the Gunicorn master then serves it on that port.
    """
    router = APIRouter(tags=["health"])
    if serve_metrics is None:
        serve_metrics = CommonSettings().metrics_port is None

    @router.get("/health/live", summary="Liveness: the process answers")
    async def live() -> dict[str, str]:
        return {"status": "alive"}

    @router.get(
        "/health/ready",
        summary="Readiness: the process can serve",
        responses={503: {"description": "Not ready; `details` names what is not"}},
    )
    async def ready() -> Response:
        result = await readiness()
        report = result if isinstance(result, ReadinessReport) else ReadinessReport.requiring_all(result)
        if drain is not None and drain.draining:
            report = report.draining()
        down = report.not_ready()
        if not report.ready:
            details: list[dict[str, Any]] = [
                {"component": name, "status": report.checks[name]} for name in down
            ]
            return error_response(503, "not_ready", f"Not ready: {', '.join(down) or 'unknown'}", details)
        body = {"status": "degraded" if down else "ready", "checks": dict(report.checks)}
        return Response(orjson.dumps(body), media_type="application/json")

    if serve_metrics:

        @router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
        async def metrics() -> Response:
            body, content_type = render_metrics()
            return Response(body, media_type=content_type)

    return router
