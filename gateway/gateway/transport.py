"""The connection pool under the gateway's httpx requests: our own HTTP/1.1 client (`gateway.http1`,
the default), an httpx transport over aiohttp's pool, or httpx's own.

Why our own aiohttp transport rather than httpx-aiohttp: that package maps every
`aiohttp.ClientConnectionError`, a reset or a disconnect *after the request was sent* included, to
`httpx.ConnectTimeout`, which says "nothing was sent" and so invites a retry of a POST the service
may have run; and a malformed answer escapes as a raw aiohttp error. Here each aiohttp failure maps
to the httpx error that says what happened, so `gateway.upstream` retries only what is safe:

| aiohttp                                          | httpx                | sent?  |
| ------------------------------------------------ | -------------------- | ------ |
| `ClientConnectorError` (refused, unreachable)    | `ConnectError`       | no     |
| `ConnectionTimeoutError` (pool wait or connect)  | `ConnectTimeout`     | no     |
| `SocketTimeoutError`, other `ServerTimeoutError` | `ReadTimeout`        | yes    |
| `ServerDisconnectedError`, resets, `ClientOSError` | `RemoteProtocolError` / `ReadError` | maybe |
| `ClientPayloadError` (truncated body)            | `ReadError`          | yes    |
| `ClientResponseError` (not HTTP)                 | `RemoteProtocolError`| yes    |

Answers are read whole before the transport returns: the gateway never streams a service's answer.
"""

from __future__ import annotations

from typing import Literal

import aiohttp
import httpx
from yarl import URL

from gateway.http1 import Http1Transport

# aiohttp adds these unless told not to; a service has no use for them (and must not compress).
_SKIPPED_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding")


class AiohttpTransport(httpx.AsyncBaseTransport):
    """`httpx.AsyncBaseTransport` over one `aiohttp.ClientSession`, made on first use (it needs the
    running loop) and closed with the transport."""

    def __init__(self, max_connections: int, keepalive_seconds: float) -> None:
        self.max_connections = max_connections
        self.keepalive_seconds = keepalive_seconds
        self._session: aiohttp.ClientSession | None = None
        # (connect, read, pool) -> the aiohttp timeout; a handful of distinct values per process.
        self._timeouts: dict[tuple[float | None, float | None, float | None], aiohttp.ClientTimeout] = {}

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self.max_connections, limit_per_host=0, keepalive_timeout=self.keepalive_seconds
        )
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, skip_auto_headers=_SKIPPED_AUTO_HEADERS
        )
        return self._session

    def _timeout(self, request: httpx.Request) -> aiohttp.ClientTimeout:
        spec = request.extensions.get("timeout") or {}
        key = (spec.get("connect"), spec.get("read"), spec.get("pool"))
        timeout = self._timeouts.get(key)
        if timeout is None:
            connect, read, pool = key
            # aiohttp's `connect` covers the wait for a pooled connection plus the connect itself.
            total_connect = None if connect is None and pool is None else (connect or 0) + (pool or 0)
            timeout = aiohttp.ClientTimeout(
                total=None, connect=total_connect, sock_connect=connect, sock_read=read
            )
            self._timeouts[key] = timeout
        return timeout

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session or self._open()
        try:
            async with session.request(
                request.method,
                URL(str(request.url), encoded=True),
                data=request.content or None,
                headers=request.headers.multi_items(),
                allow_redirects=False,
                timeout=self._timeout(request),
            ) as answer:
                body = await answer.read()
                return httpx.Response(
                    answer.status,
                    headers=answer.raw_headers,
                    content=body,
                    request=request,
                    extensions={"http_version": b"HTTP/1.1"},
                )
        except aiohttp.ClientError as exc:
            raise _mapped(exc, request) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _mapped(exc: aiohttp.ClientError, request: httpx.Request) -> httpx.TransportError:
    """The httpx error that says what happened (see the table above); order matters: subclasses first."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message, request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(message, request=request)
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return httpx.ReadTimeout(message, request=request)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return httpx.ReadError(message, request=request)
    if isinstance(exc, aiohttp.ClientOSError):
        return httpx.ReadError(message, request=request)
    return httpx.RemoteProtocolError(message, request=request)


def make_transport(
    kind: Literal["httptools", "aiohttp", "httpx"], max_connections: int, keepalive_seconds: float
) -> httpx.AsyncBaseTransport:
    """The pooled transport; made once in the lifespan, never per request.

    `httptools` is the default: aiohttp's client costs more CPU per forward, and httpx's own pool is
    the bottleneck under concurrency (encode/httpx#3215); the benchmark report (`make bench`) has the
    measurements behind the default.
    """
    if kind == "httptools":
        return Http1Transport(max_connections, keepalive_seconds)
    if kind == "aiohttp":
        return AiohttpTransport(max_connections, keepalive_seconds)
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=keepalive_seconds,
    )
    return httpx.AsyncHTTPTransport(limits=limits)
