"""What each service says it serves (`GET /v1/models`): the public catalogue and the response cache's keys."""

from __future__ import annotations

import time

import orjson

from gateway.deps import GatewayState
from gateway.upstream import Upstream
from modelgate_core.errors import ModelGateError
from modelgate_core.schemas.common import ModelInfo

# How long a service's model versions are trusted for cache keys; a redeploy is seen within this.
_VERSIONS_TTL_SECONDS = 5.0


async def fetch_models(
    state: GatewayState, upstream: Upstream, *, probe: bool = False
) -> list[ModelInfo] | None:
    """The service's own catalogue, or None when it does not answer properly."""
    try:
        answer = await state.client.request(
            upstream, "GET", "/v1/models", timeout=state.settings.readiness_timeout, probe=probe
        )
    except ModelGateError:
        return None
    if answer.status_code != 200:
        return None
    try:
        return [ModelInfo.model_validate(m) for m in orjson.loads(answer.content)["models"]]
    except (KeyError, TypeError, ValueError):  # a malformed catalogue counts as no answer
        return None


async def model_versions(state: GatewayState, service: str) -> str | None:
    """The service's model versions ("name=version,..."), refreshed every few seconds; None if unknown."""
    now = time.monotonic()
    known = state.model_versions.get(service)
    if known is not None and known[0] > now:
        return known[1]
    models = await fetch_models(state, state.upstreams[service], probe=True)
    if not models or any(m.version is None for m in models):
        return None  # not cacheable right now; the request itself still goes through
    versions = ",".join(sorted(f"{m.name}={m.version}" for m in models))
    state.model_versions[service] = (now + _VERSIONS_TTL_SECONDS, versions)
    return versions
