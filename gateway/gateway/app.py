"""The gateway app (`gunicorn gateway.app:app`): auth, logging, request IDs and the versioned proxy."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import httpx
from fastapi import APIRouter, FastAPI
from starlette.middleware.cors import CORSMiddleware

from gateway.cache import MemoryResponseCache, RedisResponseCache, ResponseCache
from gateway.config import GatewaySettings
from gateway.deps import GatewayState
from gateway.keys import open_store
from gateway.ratelimit import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from gateway.routes import models, nlp, tabular, vision
from gateway.upstream import Upstream, UpstreamClient, make_http_client
from modelgate_core.errors import install_error_handlers
from modelgate_core.health import Drain, health_router
from modelgate_core.logging import configure_logging
from modelgate_core.middleware import BodyLimitMiddleware, RequestContextMiddleware, limits_by_path

DESCRIPTION = """
ModelGate serves several ML models behind one API.

Authenticate with `X-API-Key: <key>` or `Authorization: Bearer <key>` (create one with
`make key NAME=me SCOPES=tabular,vision,nlp`). Every response carries `X-Request-ID`; every error is
`{"error": {"code", "message", "request_id"}}`.
"""


def build_upstreams(settings: GatewaySettings) -> dict[str, Upstream]:
    """The services, keyed by the scope that guards them."""
    return {
        "tabular": Upstream("tabular", str(settings.tabular_url).rstrip("/"), settings.tabular_timeout),
        "vision": Upstream("vision", str(settings.vision_url).rstrip("/"), settings.vision_timeout),
        "nlp": Upstream("nlp", str(settings.nlp_url).rstrip("/"), settings.nlp_timeout),
    }


def make_limiter(settings: GatewaySettings) -> RateLimiter | None:
    """Redis-backed when Redis is configured (shared by all workers), otherwise per process."""
    if not settings.rate_limit_enabled:
        return None
    if settings.redis_url:
        return RedisRateLimiter(str(settings.redis_url), settings.rate_limit_timeout)
    return MemoryRateLimiter()


def make_cache(settings: GatewaySettings) -> ResponseCache | None:
    """The response cache when enabled: in Redis when configured, otherwise per process."""
    if not settings.response_cache_enabled:
        return None
    if settings.redis_url:
        return RedisResponseCache(
            str(settings.redis_url), settings.response_cache_ttl_seconds, settings.rate_limit_timeout
        )
    return MemoryResponseCache(settings.response_cache_ttl_seconds)


def create_app(
    settings: GatewaySettings | None = None, transport: httpx.AsyncBaseTransport | None = None
) -> FastAPI:
    """Build the gateway; `transport` lets unit tests put in-process services behind it."""
    settings = settings or GatewaySettings()
    configure_logging(settings.service_name, settings.log_level, settings.log_json)

    drain = Drain()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        drain.watch_sigterm()
        http = make_http_client(settings.upstream_max_connections, settings.upstream_transport)
        if transport is not None:
            http = httpx.AsyncClient(transport=transport)
        keys = open_store(
            str(settings.redis_url) if settings.redis_url else None,
            settings.api_keys_file,
            settings.key_cache_seconds,
        )
        limiter = make_limiter(settings)
        cache = make_cache(settings)
        app.state.gateway = GatewayState(
            settings=settings,
            client=UpstreamClient(http, settings.connect_timeout),
            keys=keys,
            upstreams=build_upstreams(settings),
            limiter=limiter,
            cache=cache,
        )
        try:
            yield
        finally:
            await http.aclose()
            await keys.close()
            if limiter is not None:
                await limiter.close()
            if cache is not None:
                await cache.close()

    app = FastAPI(title="ModelGate", version="1.0.0", description=DESCRIPTION, lifespan=lifespan)
    install_error_handlers(app)

    async def readiness() -> Mapping[str, str]:
        state: GatewayState = app.state.gateway
        names = list(state.upstreams)
        results = await asyncio.gather(*(_upstream_ready(state, state.upstreams[n]) for n in names))
        checks = dict(zip(names, results, strict=True))
        if state.settings.redis_url:
            checks["redis"] = "ready" if await state.keys.ping() else "unreachable"
        return checks

    app.include_router(health_router(readiness, drain))
    v1 = APIRouter(prefix="/v1")
    for module in (tabular, vision, nlp, models):
        v1.include_router(module.router)
    app.include_router(v1)

    app.add_middleware(
        BodyLimitMiddleware,
        limit_for=limits_by_path(settings.max_json_bytes, {"/v1/vision/classify": settings.max_upload_bytes}),
    )
    origins = [o.strip() for o in settings.cors_allow_origins.split(",") if o.strip()]
    if origins:
        # Starlette's CORS middleware is plain ASGI; it answers preflights before auth runs.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["X-API-Key", "Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=[
                "X-Request-ID",
                "Retry-After",
                "RateLimit-Limit",
                "RateLimit-Remaining",
                "RateLimit-Reset",
                "Server-Timing",
                "X-Cache",
            ],
        )
    app.add_middleware(RequestContextMiddleware, service=settings.service_name)
    return app


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


app = create_app()
