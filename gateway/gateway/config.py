"""Gateway settings (environment variables, `.env`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, HttpUrl, RedisDsn

from modelgate_core.config import CommonSettings


class GatewaySettings(CommonSettings):
    """Where the services are, how long to wait for them, where keys live."""

    service_name: str = "gateway"
    tabular_url: HttpUrl = HttpUrl("http://127.0.0.1:8001")
    vision_url: HttpUrl = HttpUrl("http://127.0.0.1:8002")
    nlp_url: HttpUrl = HttpUrl("http://127.0.0.1:8003")
    # Unset: keys live in `api_keys_file` (single machine). Set: keys live in Redis, shared by replicas.
    redis_url: RedisDsn | None = None
    api_keys_file: Path = Path("var/api_keys.json")
    # A Redis key lookup is cached this long, so a revoked key stops working within this delay.
    key_cache_seconds: float = Field(default=5.0, ge=0)
    # Lookups remembered per worker (known keys and unknown ones, each bounded; least recently used go).
    key_cache_max_entries: int = Field(default=10_000, ge=1)
    # Redis unreachable: a key Redis confirmed within this long keeps working; any other key is a 503.
    key_outage_grace_seconds: float = Field(default=900.0, ge=0)
    # Failed authentications (an unknown key) per client address and window before 429; 0: no limit.
    auth_failure_limit: int = Field(default=20, ge=0)
    auth_failure_window_seconds: float = Field(default=60.0, gt=0)

    # Per-key rate limit (GCRA) unless a key carries its own; shared through Redis when configured.
    rate_limit_enabled: bool = True
    rate_limit_per_second: float = Field(default=100.0, gt=0)
    rate_limit_burst: int = Field(default=200, ge=1)
    # Redis unreachable: True lets requests through (logged, counted); False answers 503.
    rate_limit_fail_open: bool = True
    # Every Redis call (key lookups, rate limits, the response cache) gives up after this long.
    rate_limit_timeout: float = Field(default=0.25, gt=0)

    # Cache of deterministic predictions (tabular, nlp), keyed by model versions and canonical input.
    response_cache_enabled: bool = False
    response_cache_ttl_seconds: float = Field(default=300.0, gt=0)
    # Image uploads are large and rarely repeated: cached only when asked for.
    response_cache_vision: bool = False

    # The model directory (which service holds which model) is re-read from every service's
    # `/v2/repository/index` when older than this, and at once on an unknown name.
    model_directory_ttl_seconds: float = Field(default=2.0, gt=0)
    # A service that stops answering keeps its last known models this long, then they are forgotten.
    model_directory_stale_seconds: float = Field(default=30.0, gt=0)
    # The merged OpenAPI document (the gateway's own and every service's) is rebuilt this often.
    openapi_cache_seconds: float = Field(default=30.0, ge=0)

    # Browser origins allowed to call the API (comma-separated); empty: CORS off, no CORS headers at all.
    cors_allow_origins: str = ""

    connect_timeout: float = Field(default=1.0, gt=0)
    tabular_timeout: float = Field(default=5.0, gt=0)
    vision_timeout: float = Field(default=30.0, gt=0)
    nlp_timeout: float = Field(default=15.0, gt=0)
    # Loading a model (repository extension) can take much longer than a prediction.
    model_load_timeout: float = Field(default=120.0, gt=0)
    readiness_timeout: float = Field(default=1.0, gt=0)
    # `/health/ready` and `/v2/health/ready` share one check of every service and Redis, kept this long,
    # so unauthenticated callers cannot multiply the load on them (0: never kept, still one at a time).
    readiness_cache_seconds: float = Field(default=1.0, ge=0)
    max_upload_bytes: int = Field(default=10 * 1024 * 1024, ge=1_024)
    # Connections kept per upstream; enough for the gateway's concurrency, bounded so a slow service
    # cannot take every socket.
    upstream_max_connections: int = Field(default=256, ge=1)
    # Connection pool under the gateway's httpx requests: "httptools" (gateway.http1, our own HTTP/1.1
    # client), "aiohttp" or "httpx" (gateway.transport).
    upstream_transport: Literal["httptools", "aiohttp", "httpx"] = "httptools"
    # An idle pooled connection is closed after this long: below the services' Gunicorn KEEPALIVE (5 s),
    # so the gateway never sends a request on a connection the service is closing (a POST sent there
    # fails and is not retried: it may have reached the service).
    upstream_keepalive_seconds: float = Field(default=4.0, gt=0)
