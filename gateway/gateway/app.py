"""The gateway app (`gunicorn gateway.app:app`): auth, logging, request IDs and the versioned proxy."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from gateway.auth_failures import FailedAuthLimiter
from gateway.cache import MemoryResponseCache, RedisResponseCache, ResponseCache
from gateway.config import GatewaySettings
from gateway.deps import GatewayState
from gateway.directory import ModelDirectory, upstream_index_fetcher
from gateway.keys import store_from_settings
from gateway.openapi import ApiDocument
from gateway.proxy_routes import ProxyRoutes
from gateway.ratelimit import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from gateway.readiness import readiness_for
from gateway.routes import docs, inference, models, repository, server
from gateway.routes.domain import domain_router
from gateway.transport import make_transport
from gateway.upstream import BINARY_HEADER, Upstream, UpstreamClient
from modelgate_core import tracing
from modelgate_core.errors import install_error_handlers
from modelgate_core.health import Drain, health_router
from modelgate_core.logging import configure_logging
from modelgate_core.metrics import FASTAPI_TELEMETRY_OFF
from modelgate_core.middleware import BodyLimitMiddleware, RequestContextMiddleware

DESCRIPTION = """
ModelGate serves ML models behind one API: each service's own routes under `/v1/<service>/...`, and
every model through the Open Inference Protocol (KServe v2) under `/v2` (plus KServe v1's
`/v1/models/{name}:predict`), wherever the model lives.

Authenticate with `X-API-Key: <key>` or `Authorization: Bearer <key>` (create one with
`make key NAME=me SCOPES=tabular,vision,nlp`; `model:<name>` scopes one model, `admin` the repository).
Every response carries `X-Request-ID`. Errors on `/v2` are `{"error": "<message>", "code", "request_id"}`;
elsewhere `{"error": {"code", "message", "request_id"}}`.
"""


def build_upstreams(settings: GatewaySettings) -> dict[str, Upstream]:
    """The services, keyed by their name: the scope that guards them and their `/v1/<name>/` prefix.

    The one place services are configured; everything else (domain routes, model directory, documents,
    readiness) follows this mapping.
    """
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


def body_limit_for(settings: GatewaySettings, services: Mapping[str, Upstream]) -> Callable[[str], int]:
    """The body limit of a path: tensors (infer, :predict) may be as large as an upload, JSON may not.

    A domain route's limit here is the larger one, as it may be a multipart upload; the domain proxy
    holds its non-multipart bodies to the JSON limit itself.
    """
    upload, json_limit = settings.max_upload_bytes, settings.max_json_bytes
    domain_prefixes = tuple(f"/v1/{name}/" for name in services)

    def limit_for(path: str) -> int:
        if path.startswith("/v2/models/") and path.endswith("/infer"):
            return upload
        if path.startswith("/v1/models/") and path.endswith(":predict"):
            return upload
        if path.startswith(domain_prefixes):
            return max(upload, json_limit)
        return json_limit

    return limit_for


def create_app(
    settings: GatewaySettings | None = None, transport: httpx.AsyncBaseTransport | None = None
) -> FastAPI:
    """Build the gateway; `transport` lets unit tests put in-process services behind it."""
    settings = settings or GatewaySettings()
    configure_logging(
        settings.service_name, settings.log_level, settings.log_json, settings.log_flush_seconds
    )
    upstreams = build_upstreams(settings)
    drain = Drain(settings.drain_seconds)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        drain.watch_sigterm()
        tracing.setup(settings.service_name)  # here, in each worker: after Gunicorn's fork
        pool = transport or make_transport(
            settings.upstream_transport,
            settings.upstream_max_connections,
            settings.upstream_keepalive_seconds,
        )
        keys = store_from_settings(settings)
        limiter = make_limiter(settings)
        cache = make_cache(settings)
        client = UpstreamClient(pool, settings.connect_timeout)
        directory = ModelDirectory(
            list(upstreams),
            upstream_index_fetcher(client, upstreams, settings.readiness_timeout),
            ttl_seconds=settings.model_directory_ttl_seconds,
            stale_after_seconds=settings.model_directory_stale_seconds,
        )
        app.state.gateway = GatewayState(
            settings=settings,
            client=client,
            keys=keys,
            upstreams=upstreams,
            directory=directory,
            drain=drain,
            limiter=limiter,
            cache=cache,
            auth_failures=FailedAuthLimiter(
                settings.auth_failure_limit, settings.auth_failure_window_seconds
            ),
        )
        try:
            yield
        finally:
            await pool.aclose()
            await keys.close()
            if limiter is not None:
                await limiter.close()
            if cache is not None:
                await cache.close()
            tracing.shutdown()

    # FastAPI's own document would only know the gateway's routes: /openapi.json is the merged one.
    app = FastAPI(
        title="ModelGate",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        telemetry=FASTAPI_TELEMETRY_OFF,
    )
    app.state.api_document = ApiDocument(settings.openapi_cache_seconds)
    install_error_handlers(app)

    app.include_router(health_router(readiness_for(app)))
    for module in (server, inference, repository, models, docs):
        app.include_router(module.router)
    for name in upstreams:
        app.include_router(domain_router(name))

    # Innermost: the forwarding routes are answered here, after the body limit, CORS and request context.
    app.add_middleware(ProxyRoutes, services=list(upstreams))
    app.add_middleware(BodyLimitMiddleware, limit_for=body_limit_for(settings, upstreams))
    origins = [o.strip() for o in settings.cors_allow_origins.split(",") if o.strip()]
    if origins:
        # Starlette's CORS middleware is plain ASGI; it answers preflights before auth runs.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["X-API-Key", "Authorization", "Content-Type", "X-Request-ID", BINARY_HEADER],
            expose_headers=[
                "X-Request-ID",
                "X-Trace-ID",
                "Retry-After",
                "RateLimit-Limit",
                "RateLimit-Remaining",
                "RateLimit-Reset",
                "Server-Timing",
                "X-Cache",
                BINARY_HEADER,
            ],
        )
    app.add_middleware(RequestContextMiddleware, service=settings.service_name)
    return app


app = create_app()
