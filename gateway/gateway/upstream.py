"""The gateway's one pooled HTTP client to the model services, and the one place upstream failures
become gateway errors.

A service that is down or refuses is 503, a timeout is 504, an answer we cannot use is 502; the
service's own 4xx (and 503 while its model loads) pass through in the common error shape.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import httpx
import orjson

from modelgate_core.context import annotate, current_request_id, record_timing
from modelgate_core.errors import BadGateway, GatewayTimeout, ModelGateError, ServiceUnavailable
from modelgate_core.metrics import UPSTREAM_LATENCY

logger = logging.getLogger("gateway.upstream")

# Hop-by-hop and length headers are the transport's business, not something to copy across.
_DROP_RESPONSE_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "date", "server"}
)


@dataclass(frozen=True, slots=True)
class Upstream:
    """One model service: its name (also the scope that guards it), base URL and read timeout."""

    name: str
    base_url: str
    timeout: float


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status_code: int
    content: bytes
    headers: Mapping[str, str]


class UpstreamClient:
    """Sends requests to the services over one pooled `httpx.AsyncClient` made in the lifespan."""

    def __init__(self, client: httpx.AsyncClient, connect_timeout: float) -> None:
        self.client = client
        self.connect_timeout = connect_timeout

    async def request(
        self,
        upstream: Upstream,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        content_type: str | None = None,
        params: Mapping[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - a per-call read timeout handed to httpx
    ) -> UpstreamResponse:
        """Send one request; raise the mapped `ModelGateError` on failure."""
        headers = {"x-request-id": current_request_id() or ""}
        if content_type:
            headers["content-type"] = content_type
        read_timeout = timeout or upstream.timeout
        started = time.perf_counter()
        outcome = "error"
        try:
            response = await self.client.request(
                method,
                upstream.base_url + path,
                content=content,
                params=params,
                headers=headers,
                timeout=httpx.Timeout(read_timeout, connect=self.connect_timeout),
            )
            outcome = str(response.status_code)
        except httpx.HTTPError as exc:
            outcome = type(exc).__name__
            raise map_transport_error(upstream, exc) from exc
        finally:
            elapsed = time.perf_counter() - started
            UPSTREAM_LATENCY.labels(upstream.name, outcome).observe(elapsed)
            annotate(upstream=upstream.name, upstream_ms=round(elapsed * 1000, 3), upstream_status=outcome)
            record_timing("upstream", elapsed * 1000)
        return check_response(upstream, response)


def map_transport_error(upstream: Upstream, exc: httpx.HTTPError) -> ModelGateError:
    """Map an httpx failure to the gateway error a client should see."""
    if isinstance(exc, httpx.TimeoutException) and not isinstance(
        exc, httpx.ConnectTimeout | httpx.PoolTimeout
    ):
        return GatewayTimeout(f"The {upstream.name} service did not answer in time")
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return ServiceUnavailable(f"The {upstream.name} service is unavailable")
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        # The connection was cut mid-request: most often the service process died or restarted.
        return BadGateway(f"The {upstream.name} service closed the connection")
    return BadGateway(f"The {upstream.name} service failed: {type(exc).__name__}")


def check_response(upstream: Upstream, response: httpx.Response) -> UpstreamResponse:
    """Pass good answers and the service's own client errors through; anything else is a 502."""
    status = response.status_code
    headers = {k: v for k, v in response.headers.items() if k.lower() not in _DROP_RESPONSE_HEADERS}
    is_json = response.headers.get("content-type", "").startswith("application/json")
    if 200 <= status < 300 and is_json:
        return UpstreamResponse(status, response.content, headers)
    if status in (400, 404, 405, 413, 415, 422, 429, 503) and is_json and _is_error_shape(response.content):
        return UpstreamResponse(status, response.content, headers)
    logger.warning(
        "invalid upstream answer",
        extra={
            "upstream": upstream.name,
            "upstream_status": status,
            "content_type": response.headers.get("content-type"),
        },
    )
    if status == 503:
        raise ServiceUnavailable(f"The {upstream.name} service is unavailable")
    raise BadGateway(f"The {upstream.name} service gave an invalid answer (HTTP {status})")


def _is_error_shape(content: bytes) -> bool:
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return False
    return isinstance(body, dict) and isinstance(body.get("error"), dict) and "code" in body["error"]


def make_http_client(max_connections: int) -> httpx.AsyncClient:
    """The pooled client; made once in the lifespan, never per request."""
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    return httpx.AsyncClient(limits=limits, follow_redirects=False, trust_env=False)
