"""Forwarding a validated request to its service and returning the service's answer as is."""

from __future__ import annotations

import time

from fastapi import Request
from starlette.responses import Response

from gateway.cache import CACHE_LOOKUPS, cache_key
from gateway.deps import GatewayState
from gateway.routes.models import fetch_models
from modelgate_core.schemas.common import ErrorResponse

# How long a service's model versions are trusted for cache keys; a redeploy is seen within this.
_VERSIONS_TTL_SECONDS = 5.0

# Errors every proxied route can answer, for the OpenAPI document.
PROXY_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse, "description": description}
    for code, description in {
        400: "The body could not be read as the declared content type",
        401: "Missing or unknown API key",
        403: "The key lacks this route's scope",
        413: "Request body too large",
        429: "Rate limit exceeded; see Retry-After",
        422: "Invalid input; `details` lists the fields",
        502: "The service gave an invalid answer",
        503: "The service is down or its model is not loaded",
        504: "The service did not answer in time",
    }.items()
}


async def forward(
    state: GatewayState, service: str, request: Request, cache_input: bytes | None = None
) -> Response:
    """Send this request's body to `service` at the same path; the JSON answer is returned unparsed.

    With the response cache on, `cache_input` (the canonical input) makes the answer cacheable.
    """
    path = request.url.path
    key = None
    if state.cache is not None and cache_input is not None:
        versions = await model_versions(state, service)
        if versions is not None:
            key = cache_key(path, versions, cache_input)
            cached = await state.cache.get(key)
            CACHE_LOOKUPS.labels(path, "hit" if cached is not None else "miss").inc()
            if cached is not None:
                return Response(cached, media_type="application/json", headers={"x-cache": "hit"})
    answer = await state.client.request(
        state.upstreams[service],
        request.method,
        path,
        content=await request.body(),
        content_type=request.headers.get("content-type"),
        params=dict(request.query_params),
    )
    headers = dict(answer.headers)
    if key is not None and state.cache is not None:
        headers["x-cache"] = "miss"
        if answer.status_code == 200:
            await state.cache.put(key, answer.content)
    return Response(answer.content, status_code=answer.status_code, headers=headers)


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
