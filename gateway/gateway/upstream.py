"""The gateway's one pooled HTTP client to the model services, and the one place upstream failures
become gateway errors.

A service that is down or refuses is 503, a timeout is 504, an answer we cannot use is 502; the
service's own 4xx (and 503 while its model loads) pass through in the common error shape, or on `/v2`
paths in the Open Inference Protocol's (`{"error": "<message>", ...}`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx
import orjson

from gateway.resilience import CircuitBreaker, ReplicaResolver, RetryBudget, backoff
from modelgate_core import tracing
from modelgate_core.context import annotate, current_request_id, record_timing
from modelgate_core.errors import BadGateway, GatewayTimeout, ModelGateError, ServiceUnavailable
from modelgate_core.metrics import UPSTREAM_LATENCY, Children
from modelgate_core.oip.types import HEADER_LENGTH_HEADER

logger = logging.getLogger("gateway.upstream")

# OIP binary tensor extension: the length of the JSON part of a body whose tensors follow as raw bytes.
BINARY_HEADER = HEADER_LENGTH_HEADER

# The only service response headers a client sees; the rest (hop-by-hop, lengths, the service's own
# request ID echo) are the transport's or the gateway's business.
_PASS_RESPONSE_HEADERS = frozenset(
    {
        "content-type",
        "server-timing",
        "retry-after",
        "x-cache",
        "x-model-version",  # which version answered (a canary split chooses per request)
        "allow",  # a service's 405 says which methods its route has
        BINARY_HEADER,
    }
)
# The only client request headers a service sees besides `content-type` and the request ID.
_PASS_REQUEST_HEADERS = frozenset({BINARY_HEADER})
# Service errors a client may see as they are; any other status is the gateway's 502.
_PASS_ERROR_STATUSES = frozenset({400, 404, 405, 409, 413, 415, 422, 429, 503})
_UPSTREAM_LATENCY = Children(UPSTREAM_LATENCY)
# Parsed upstream URLs kept per service (see `Upstream.url_for`).
_URL_CACHE_SIZE = 1024


@dataclass
class Upstream:
    """One model service: its name (also the scope that guards it), base URL, read timeout, and the
    per-process state that protects it (circuit breaker, replica list)."""

    name: str
    base_url: str
    timeout: float
    breaker: CircuitBreaker = field(init=False)
    resolver: ReplicaResolver = field(init=False)
    scheme: str = field(init=False)
    _urls: dict[tuple[str, str, str | None], httpx.URL] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        url = httpx.URL(self.base_url)
        self.scheme = url.scheme
        self.breaker = CircuitBreaker(self.name)
        self.resolver = ReplicaResolver(url.host, url.port or 80)

    def url_for(self, address: str, path: str, query: str | None = None) -> httpx.URL:
        """Absolute URL of `path` on the replica at `address`, with the `query` string as the client
        sent it. Parsed URLs are kept (parsing one costs more than the rest of building the request);
        the cache is bounded because domain paths are whatever clients send."""
        key = (address, path, query)
        url = self._urls.get(key)
        if url is None:
            if len(self._urls) >= _URL_CACHE_SIZE:
                self._urls.clear()
            target = f"{path}?{query}" if query else path
            url = self._urls[key] = httpx.URL(f"{self.scheme}://{address}:{self.resolver.port}{target}")
        return url


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status_code: int
    content: bytes
    headers: Mapping[str, str]


class UpstreamClient:
    """Sends requests to the services over one pooled `httpx.AsyncClient` made in the lifespan.

    A refused connection (nothing was sent, so any method is safe) is retried on the next replica with
    jittered backoff, within a retry budget; everything else fails at once. The circuit breaker answers
    503 immediately while a service keeps failing.
    """

    def __init__(
        self, transport: httpx.AsyncBaseTransport, connect_timeout: float, max_retries: int = 2
    ) -> None:
        # The transport, not an `httpx.AsyncClient`: the client's cookie jar, redirects, auth and URL
        # merging are work a proxy must not do per request (the profile is in the benchmark report).
        self.transport = transport
        self.connect_timeout = connect_timeout
        self.max_retries = max_retries
        self.budget = RetryBudget()
        # read timeout -> the request's timeout extension; a few distinct values per process.
        self._timeouts: dict[float, dict[str, float | None]] = {}

    def _timeout(self, read: float) -> dict[str, float | None]:
        timeout = self._timeouts.get(read)
        if timeout is None:
            connect = self.connect_timeout
            timeout = {"connect": connect, "read": read, "write": read, "pool": connect}
            self._timeouts[read] = timeout
        return timeout

    async def request(
        self,
        upstream: Upstream,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        content_type: str | None = None,
        headers: Mapping[str, str] | None = None,
        query: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - a per-call read timeout handed to httpx
        probe: bool = False,
    ) -> UpstreamResponse:
        """Send one request; raise the mapped `ModelGateError` on failure.

        `headers` are the client's; only those a service needs (`forwardable_headers`) are sent.
        `path` and `query` go as they are (percent-encoded, as the client sent them).
        `probe` requests (readiness checks) bypass the breaker and retries: they must see the truth.
        """
        admission = None if probe else upstream.breaker.admit()
        if not probe and admission is None:
            raise ServiceUnavailable(f"The {upstream.name} service is unavailable (circuit open)")
        sent_headers = forwardable_headers(headers or {})
        sent_headers["x-request-id"] = current_request_id() or ""
        if content_type:
            sent_headers["content-type"] = content_type
        read_timeout = timeout or upstream.timeout
        sent_headers["x-request-deadline-ms"] = f"{read_timeout * 1000:.0f}"  # how long we wait
        extensions = {"timeout": self._timeout(read_timeout)}
        # Off: None at the cost of a call. On: the service's span is this one's child (`traceparent`).
        span = tracing.start_client_span(upstream.name, method, path, sent_headers)
        failure: BaseException | None = None
        self.budget.deposit()
        started = time.perf_counter()
        outcome = "error"
        attempt = 0
        try:
            while True:
                address = await upstream.resolver.pick()
                request = httpx.Request(
                    method,
                    upstream.url_for(address, path, query),
                    content=content,
                    headers=sent_headers,
                    extensions=extensions,
                )
                try:
                    response = await self.transport.handle_async_request(request)
                    break
                except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                    upstream.resolver.forget(address)
                    if probe or attempt >= self.max_retries or not self.budget.withdraw():
                        outcome = type(exc).__name__
                        raise
                    attempt += 1
                    await asyncio.sleep(backoff(attempt))
            try:
                await response.aread()
            finally:
                await response.aclose()
            outcome = str(response.status_code)
            answer = check_response(upstream, response, path)
        except httpx.HTTPError as exc:
            outcome = type(exc).__name__
            if admission is not None:
                admission.failure()
            failure = map_transport_error(upstream, exc)
            raise failure from exc
        except ModelGateError as exc:
            failure = exc
            if admission is not None:
                admission.failure()
            raise
        else:
            if admission is not None:
                admission.success()
        finally:
            if admission is not None:
                admission.release()  # any other way out (cancelled, an unmapped error) decides nothing
            elapsed = time.perf_counter() - started
            _UPSTREAM_LATENCY(upstream.name, outcome).observe(elapsed)
            if not probe:
                annotate(
                    upstream=upstream.name,
                    upstream_ms=round(elapsed * 1000, 3),
                    upstream_status=outcome,
                    upstream_retries=attempt,
                )
                record_timing("upstream", elapsed * 1000)
            if span is not None:
                tracing.end_client_span(span, outcome, attempt, failure)
        return answer


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


def forwardable_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The client request headers a service is sent (keys and cookies never are). `headers` has
    lower-case names or looks names up case-insensitively (Starlette's `Headers`)."""
    return {name: value for name in _PASS_REQUEST_HEADERS if (value := headers.get(name)) is not None}


def check_response(upstream: Upstream, response: httpx.Response, path: str = "") -> UpstreamResponse:
    """Pass good answers and the service's own client errors through; anything else is a 502.

    Good: 2xx JSON, 2xx empty, or 2xx binary tensors (octet-stream with the OIP length header).
    """
    status = response.status_code
    # One pass over the raw header list: httpx's `Headers` decodes every header on each lookup.
    headers: dict[str, str] = {}
    for raw_name, raw_value in response.headers.raw:
        name = raw_name.decode("latin-1").lower()
        if name in _PASS_RESPONSE_HEADERS:
            headers[name] = raw_value.decode("latin-1")
    content_type = headers.get("content-type", "")
    is_json = content_type.startswith("application/json")
    content = response.content
    if 200 <= status < 300 and (is_json or not content or _is_binary_answer(headers, content)):
        return UpstreamResponse(status, content, headers)
    if status in _PASS_ERROR_STATUSES and is_json and _is_error_shape(content, oip=_is_oip(path)):
        return UpstreamResponse(status, content, headers)
    logger.warning(
        "invalid upstream answer",
        extra={"upstream": upstream.name, "upstream_status": status, "content_type": content_type},
    )
    if status == 503:
        raise ServiceUnavailable(f"The {upstream.name} service is unavailable")
    raise BadGateway(f"The {upstream.name} service gave an invalid answer (HTTP {status})")


def _is_oip(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


def _is_binary_answer(headers: Mapping[str, str], content: bytes) -> bool:
    declared = headers.get(BINARY_HEADER, "")
    return (
        headers.get("content-type", "").startswith("application/octet-stream")
        and declared.isdigit()
        and int(declared) <= len(content)
    )


def _is_error_shape(content: bytes, *, oip: bool) -> bool:
    """The common shape (`{"error": {"code", ...}}`), or on OIP paths also `{"error": "<message>"}`."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(body, dict):
        return False
    error = body.get("error")
    return (isinstance(error, dict) and "code" in error) or (oip and isinstance(error, str))
