"""The gateway's readiness, shared by `/health/ready` and the OIP's `/v2/health/ready`.

The rule, for a load balancer: the gateway is ready while it can serve at least one model service and
its own process is fine (not draining), so one dead service does not take every replica out of rotation
(that service's routes answer 503 on their own). A service counts when it answers its own readiness
and its circuit is closed. Redis, when configured, is reported but does not decide: it is shared by
every replica, so taking them all out would not help, and the gateway keeps serving the keys it
confirmed recently while it is down (`KEY_OUTAGE_GRACE_SECONDS`). The body of `/health/ready` names
every component's status either way ("degraded" when one is down).

Asking every service and Redis on each unauthenticated request would let anyone multiply the load on
them, so the answer is shared: one check at a time, kept `READINESS_CACHE_SECONDS`. Draining is not
cached: it shows at once.
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI

from gateway.deps import GatewayState
from gateway.upstream import Upstream
from modelgate_core.health import ReadinessReport, SharedCheck


class GatewayReadiness:
    """The gateway's readiness check (a `modelgate_core.health.ReadinessCheck`), one per app.

    It finds the app's state when called, so it can be made before the lifespan has run.
    """

    def __init__(self, app: FastAPI) -> None:
        self._app = app
        self._shared: SharedCheck[dict[str, str]] | None = None

    async def __call__(self) -> ReadinessReport:
        state = self._state()
        if self._shared is None:
            self._shared = SharedCheck(
                lambda: check_components(self._state()), state.settings.readiness_cache_seconds
            )
        checks = await self._shared()
        report = ReadinessReport(gateway_is_ready(checks, list(state.upstreams)), checks)
        return report.draining() if state.drain.draining else report

    def _state(self) -> GatewayState:
        state: GatewayState = self._app.state.gateway
        return state


def readiness_for(app: FastAPI) -> GatewayReadiness:
    """The app's one `GatewayReadiness` (made on first use), so that both readiness routes share it."""
    readiness: GatewayReadiness | None = getattr(app.state, "readiness", None)
    if readiness is None:
        readiness = app.state.readiness = GatewayReadiness(app)
    return readiness


def gateway_is_ready(checks: dict[str, str], services: list[str]) -> bool:
    """At least one service is ready (the process's own state is the caller's to add)."""
    return any(checks.get(service) == "ready" for service in services)


async def check_components(state: GatewayState) -> dict[str, str]:
    """Component -> "ready" or why not: every service and Redis when configured, asked now (uncached)."""
    names = list(state.upstreams)
    results = await asyncio.gather(*(_upstream_ready(state, state.upstreams[n]) for n in names))
    checks = dict(zip(names, results, strict=True))
    if state.settings.redis_url:
        checks["redis"] = "ready" if await state.keys.ping() else "unreachable"
    return checks


async def _upstream_ready(state: GatewayState, upstream: Upstream) -> str:
    try:
        answer = await state.client.request(
            upstream, "GET", "/health/ready", timeout=state.settings.readiness_timeout, probe=True
        )
    except Exception:  # noqa: BLE001 - any failure is "not ready"; the reason is in the logs
        return "unreachable"
    if answer.status_code != 200:
        return f"not ready (HTTP {answer.status_code})"
    # The service answers, but this gateway has stopped sending it traffic for now.
    return "ready" if upstream.breaker.state == "closed" else f"circuit {upstream.breaker.state}"
