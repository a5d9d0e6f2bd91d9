"""The gateway's readiness, shared by `/health/ready` and the OIP's `/v2/health/ready`."""

from __future__ import annotations

import asyncio

from gateway.deps import GatewayState
from gateway.upstream import Upstream


async def check_readiness(state: GatewayState) -> dict[str, str]:
    """Component -> "ready" or why not: every service, Redis when configured, and the process itself."""
    names = list(state.upstreams)
    results = await asyncio.gather(*(_upstream_ready(state, state.upstreams[n]) for n in names))
    checks = dict(zip(names, results, strict=True))
    if state.settings.redis_url:
        checks["redis"] = "ready" if await state.keys.ping() else "unreachable"
    if state.drain.draining:
        checks["process"] = "draining"
    return checks


def not_ready(checks: dict[str, str]) -> list[str]:
    """The components that are not ready, sorted."""
    return sorted(name for name, status in checks.items() if status != "ready")


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
