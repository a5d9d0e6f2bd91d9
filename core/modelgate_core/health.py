"""Liveness, readiness and metrics endpoints, the same in every process."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Mapping
from types import FrameType
from typing import Any

import orjson
from fastapi import APIRouter
from starlette.responses import Response

from modelgate_core.errors import error_response
from modelgate_core.metrics import render_metrics

# A readiness check returns component name -> status ("ready" or why not).
ReadinessCheck = Callable[[], Awaitable[Mapping[str, str]]]

logger = logging.getLogger("modelgate.lifecycle")


class Drain:
    """Turns readiness to 503 as soon as the process is told to stop (SIGTERM), while the server
    finishes its in-flight requests, so load balancers stop sending new ones first."""

    def __init__(self) -> None:
        self.draining = False

    def watch_sigterm(self) -> None:
        """Chain onto the current SIGTERM handler (Uvicorn's graceful shutdown); call in the lifespan."""
        if threading.current_thread() is not threading.main_thread():
            return  # signals only reach the main thread (in-process test clients run elsewhere)
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            self.draining = True
            logger.info("SIGTERM received: draining in-flight requests")
            if callable(previous):
                previous(signum, frame)

        signal.signal(signal.SIGTERM, on_sigterm)


def health_router(readiness: ReadinessCheck, drain: Drain | None = None) -> APIRouter:
    """`/health/live`, `/health/ready` (503 naming what is not ready, or draining) and `/metrics`."""
    router = APIRouter(tags=["health"])

    @router.get("/health/live", summary="Liveness: the process answers")
    async def live() -> dict[str, str]:
        return {"status": "alive"}

    @router.get(
        "/health/ready",
        summary="Readiness: every component is ready",
        responses={503: {"description": "Some component is not ready; `details` names it"}},
    )
    async def ready() -> Response:
        checks = dict(await readiness())
        if drain is not None and drain.draining:
            checks["process"] = "draining"
        not_ready = sorted(name for name, status in checks.items() if status != "ready")
        if not_ready:
            details: list[dict[str, Any]] = [
                {"component": name, "status": checks[name]} for name in not_ready
            ]
            return error_response(503, "not_ready", f"Not ready: {', '.join(not_ready)}", details)
        return Response(orjson.dumps({"status": "ready", "checks": checks}), media_type="application/json")

    @router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    async def metrics() -> Response:
        body, content_type = render_metrics()
        return Response(body, media_type=content_type)

    return router
