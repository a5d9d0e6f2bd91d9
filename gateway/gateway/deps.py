"""Dependencies: the app's shared objects and API-key authentication, as `Annotated` aliases."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import Scope

from gateway.auth_failures import FailedAuthLimiter
from gateway.cache import ResponseCache
from gateway.config import GatewaySettings
from gateway.directory import ModelDirectory
from gateway.keys import ADMIN_SCOPE, ApiKey, KeyStore
from gateway.ratelimit import RATE_LIMIT_ERRORS, RATE_LIMITED, Limit, RateLimiter, headers_for, limit_source
from gateway.upstream import Upstream, UpstreamClient
from modelgate_core import tracing
from modelgate_core.context import add_response_header, annotate
from modelgate_core.errors import Forbidden, RateLimited, ServiceUnavailable, Unauthorized
from modelgate_core.health import Drain

logger = logging.getLogger("gateway.auth")


@dataclass(slots=True)
class GatewayState:
    """Everything the lifespan makes once and the handlers share."""

    settings: GatewaySettings
    client: UpstreamClient
    keys: KeyStore
    upstreams: dict[str, Upstream]
    directory: ModelDirectory
    drain: Drain = field(default_factory=Drain)
    limiter: RateLimiter | None = None
    cache: ResponseCache | None = None
    # Unknown keys per client address (guessing is refused before any lookup once over the limit).
    auth_failures: FailedAuthLimiter | None = None
    # service -> (expires at, "model=version,..."), for cache keys
    model_versions: dict[str, tuple[float, str]] = field(default_factory=dict)
    # cache key -> the answer of the one request asking the service for it now (None: no answer)
    cache_flights: dict[str, asyncio.Future[bytes | None]] = field(default_factory=dict)


async def get_state(request: Request) -> GatewayState:
    # async on purpose: FastAPI runs a plain `def` dependency in its thread pool, a hand-off per
    # request (the profile in docs/benchmarks.md shows what that costs).
    state: GatewayState = request.app.state.gateway
    return state


State = Annotated[GatewayState, Depends(get_state)]

# auto_error=False: a missing key must be our 401 in the common shape, not FastAPI's default.
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key")
_bearer = HTTPBearer(auto_error=False, description="API key as a bearer token")


async def authenticate(
    state: State,
    request: Request,
    api_key: Annotated[str | None, Depends(_api_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiKey:
    """Dependency: the caller's key record (see `verify_key`)."""
    presented = api_key or (bearer.credentials if bearer else None)
    return await verify_key(state, presented, client_address(request.scope))


def client_address(scope: Scope) -> str:
    """The peer's address, as the server saw it (Uvicorn's proxy-headers handling may have replaced
    it with the forwarded one from a trusted proxy)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key in `X-API-Key`, or in `Authorization: Bearer <key>`, read as the dependencies above
    read them (for the plain-ASGI proxy routes, which have no dependencies)."""
    api_key = headers.get("x-api-key")
    if api_key:
        return api_key
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    return credentials if scheme.lower() == "bearer" and credentials else None


async def verify_key(state: GatewayState, presented: str | None, address: str) -> ApiKey:
    """The caller's key record, its request counted against its rate limit; 401 when the key is
    missing or unknown, 429 over the limit or when `address` has presented too many unknown keys."""
    if not presented:
        raise Unauthorized(
            "Missing API key: send 'X-API-Key: <key>' or 'Authorization: Bearer <key>'",
            headers={"www-authenticate": "Bearer"},
        )
    if state.auth_failures is not None:
        state.auth_failures.check(address)
    with tracing.step("gateway.auth"):
        record = await state.keys.authenticate(presented)
    if record is None:
        if state.auth_failures is not None:
            state.auth_failures.record_failure(address)
        raise Unauthorized("Invalid API key", headers={"www-authenticate": "Bearer"})
    annotate(key_name=record.name)
    if state.limiter is not None:
        with tracing.step("gateway.rate_limit"):
            await enforce_rate_limit(state, record)
    return record


async def enforce_rate_limit(state: GatewayState, record: ApiKey) -> None:
    """Count the request against the key's limit; 429 with `Retry-After` when over it."""
    settings = state.settings
    limit = Limit(record.rate or settings.rate_limit_per_second, record.burst or settings.rate_limit_burst)
    try:
        decision = await state.limiter.hit(record.key_hash, limit)  # type: ignore[union-attr]
    except Exception as exc:
        outcome = "fail_open" if settings.rate_limit_fail_open else "fail_closed"
        RATE_LIMIT_ERRORS.labels(outcome).inc()
        logger.warning("rate-limit store unavailable", extra={"outcome": outcome, "error": repr(exc)})
        if settings.rate_limit_fail_open:
            return
        raise ServiceUnavailable("Rate limiting is unavailable; try again shortly") from exc
    headers = headers_for(decision)
    for name, value in headers.items():
        add_response_header(name, value)
    if not decision.allowed:
        RATE_LIMITED.labels(limit_source(record.rate, record.burst)).inc()
        # The headers are already on the response via the context; the 429 needs no copy of them.
        raise RateLimited(
            f"Rate limit of {limit.rate:g}/s (burst {limit.burst}) exceeded for key '{record.name}'"
        )


AuthenticatedKey = Annotated[ApiKey, Depends(authenticate)]


def require_scope(scope: str) -> Callable[[ApiKey], Awaitable[ApiKey]]:
    """Dependency: the key must carry `scope` (or `*`); 403 otherwise."""

    async def check(key: AuthenticatedKey) -> ApiKey:
        check_scope(key, scope)
        return key

    return check


def check_scope(key: ApiKey, scope: str) -> None:
    """403 unless the key carries `scope` (or `*`)."""
    if not key.allows(scope):
        raise Forbidden(f"API key '{key.name}' lacks the '{scope}' scope")


def require_model_scope(key: ApiKey, model: str, service: str) -> None:
    """403 unless the key may call `model`, which `service` holds (known only once it is located)."""
    if not key.allows_model(model, service):
        raise Forbidden(f"API key '{key.name}' lacks the '{service}' or 'model:{model}' scope")


AdminKey = Annotated[ApiKey, Depends(require_scope(ADMIN_SCOPE))]
