"""A keep-alive HTTP/1.1 client for the gateway's forwards: asyncio protocols and httptools' parser
behind httpx's transport API (`UPSTREAM_TRANSPORT=httptools`, the default).

Why not aiohttp's client: per forwarded request it did more work than the whole rest of a bare proxy
(the floor measured in `make bench`, scripts/peers/bare_proxy.py). A forward needs little of it: one
request at a time per connection, answers read whole (the gateway never streams a service's answer),
no redirects, cookies, compression, proxies or TLS. What is left is a pool of connections per service
address, the request written in one call, and the answer parsed by the same parser Uvicorn serves with.

Each failure maps to the httpx error that says whether the request may have reached the service,
which is what `gateway.upstream` decides retries on:

| what happened                                          | httpx                  | sent?  |
| ------------------------------------------------------ | ---------------------- | ------ |
| refused, unreachable (`OSError` while connecting)      | `ConnectError`         | no     |
| no connection within the connect timeout               | `ConnectTimeout`       | no     |
| every connection busy past the pool timeout            | `PoolTimeout`          | no     |
| no answer within the read timeout                      | `ReadTimeout`          | yes    |
| closed before any byte of an answer                    | `RemoteProtocolError`  | maybe  |
| closed or reset mid-answer (a truncated body)          | `ReadError`            | yes    |
| bytes that are not an HTTP answer                      | `RemoteProtocolError`  | yes    |
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from typing import cast

import httptools
import httpx

_Key = tuple[str, int]
# Statuses whose answers have no body whatever their headers say (RFC 9110 §6.4.1).
_NO_BODY_STATUSES = frozenset({204, 304})
# Bodies up to this size go out in one write with the head; larger ones are not copied to join them.
_JOIN_LIMIT = 64 * 1024


class _Connection(asyncio.Protocol):
    """One connection to a service: one request at a time, kept open between them when both ends
    agree to (`Connection: keep-alive`, the HTTP/1.1 default)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.answer: asyncio.Future[httpx.Response] | None = None
        self.request: httpx.Request | None = None
        self.closed = False
        self.reusable = True
        self.idle_since = 0.0
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._received = False
        self._headers_done = False
        self._delimited = False  # the answer says where its body ends (a length or chunks)

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP connection's transport; uvloop's (the gateway's loop) does not subclass asyncio's class.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.answer is None or self.answer.done():
            # Bytes nobody asked for: the connection is out of step, so it is never used again.
            self.reusable = False
            self.abort()
            return
        self._received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(httpx.RemoteProtocolError("The service switched protocols", request=self.request))
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"Not an HTTP answer: {exc}", request=self.request))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.answer is None or self.answer.done():
            return
        if self._headers_done and not self._delimited and exc is None:
            # An answer with neither a length nor chunks ends where the connection does.
            self._complete()
        elif not self._received:
            self._fail(
                httpx.RemoteProtocolError(
                    "Server disconnected without sending a response", request=self.request
                )
            )
        else:
            reason = f": {exc}" if exc else ""
            self._fail(httpx.ReadError(f"The connection closed mid-answer{reason}", request=self.request))

    # -- httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        lower = name.lower()
        if lower == b"content-length" or lower == b"transfer-encoding":
            self._delimited = True

    def on_headers_complete(self) -> None:
        self._headers_done = True
        if not self.parser.should_keep_alive():
            self.reusable = False
        status = self.parser.get_status_code()
        if status in _NO_BODY_STATUSES:
            self._delimited = True
        if self.request is not None and self.request.method == "HEAD":
            # A HEAD answer has no body, but the parser cannot know the request was HEAD.
            self.reusable = False
            self._complete()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._complete()

    # -- the gateway's side

    def send(self, request: httpx.Request, head: bytes, body: bytes) -> asyncio.Future[httpx.Response]:
        assert self.transport is not None
        self.request = request
        self._headers, self._body = [], []
        self._received = self._headers_done = self._delimited = False
        self.answer = asyncio.get_running_loop().create_future()
        if len(body) <= _JOIN_LIMIT:
            self.transport.write(head + body)
        else:
            self.transport.write(head)
            self.transport.write(body)
        return self.answer

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _complete(self) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_result(
                httpx.Response(
                    self.parser.get_status_code(),
                    headers=self._headers,
                    content=b"".join(self._body),
                    request=self.request,
                    extensions={"http_version": b"HTTP/1.1"},
                )
            )

    def _fail(self, exc: httpx.TransportError) -> None:
        self.reusable = False
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(exc)
        self.abort()


class Http1Transport(httpx.AsyncBaseTransport):
    """`httpx.AsyncBaseTransport` over a pool of at most `max_connections` HTTP/1.1 connections (all
    addresses together); an idle one is closed after `keepalive_seconds`."""

    def __init__(self, max_connections: int, keepalive_seconds: float) -> None:
        self.max_connections = max_connections
        self.keepalive_seconds = keepalive_seconds
        self._idle: defaultdict[_Key, list[_Connection]] = defaultdict(list)
        self._open = 0
        self._waiting: deque[asyncio.Future[None]] = deque()  # requests waiting for room in the pool
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout") or {}
        url = request.url
        if url.scheme != "http":
            raise httpx.UnsupportedProtocol(
                f"Only http:// is forwarded, not {url.scheme}://", request=request
            )
        key = (url.host, url.port or 80)
        connection = await self._acquire(key, request, timeouts.get("connect"), timeouts.get("pool"))
        head = self._head(request)
        body = request.content
        try:
            async with asyncio.timeout(timeouts.get("read")):
                response = await connection.send(request, head, body)
        except TimeoutError as exc:
            connection.abort()
            raise httpx.ReadTimeout("The service did not answer in time", request=request) from exc
        except BaseException:
            connection.abort()  # cancelled (the client went away) or failed: its answer is nobody's now
            raise
        finally:
            self._release(key, connection)
        return response

    @staticmethod
    def _head(request: httpx.Request) -> bytes:
        # httpx.Request has set Host and Content-Length already.
        lines = [b"%s %s HTTP/1.1" % (request.method.encode(), request.url.raw_path)]
        lines += [b"%s: %s" % pair for pair in request.headers.raw]
        return b"\r\n".join(lines) + b"\r\n\r\n"

    async def _acquire(
        self, key: _Key, request: httpx.Request, connect: float | None, pool: float | None
    ) -> _Connection:
        if self._closed:
            raise httpx.ConnectError("The gateway is shutting down", request=request)
        try:
            async with asyncio.timeout(pool):
                while (reused := self._reuse(key)) is None and not self._room():
                    await self._wait()  # a connection was released or closed: look again
        except TimeoutError as exc:
            raise httpx.PoolTimeout("Every connection to the services is busy", request=request) from exc
        if reused is not None:
            return reused
        self._open += 1
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect):
                _, connection = await loop.create_connection(_Connection, key[0], key[1])
        except BaseException as exc:
            self._forget_one()
            if isinstance(exc, TimeoutError):  # before OSError, of which it is a subclass
                raise httpx.ConnectTimeout(f"No connection to {key[0]}:{key[1]}", request=request) from exc
            if isinstance(exc, OSError):
                raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from exc
            raise
        return connection

    def _reuse(self, key: _Key) -> _Connection | None:
        """The most recently used idle connection to `key` still open and fresh, if any."""
        idle = self._idle[key]
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if not connection.closed and now - connection.idle_since < self.keepalive_seconds:
                return connection
            self._discard(connection)
        return None

    def _room(self) -> bool:
        """Whether another connection may be opened, closing an idle one to another address if need be."""
        return self._open < self.max_connections or self._close_one_idle()

    async def _wait(self) -> None:
        room = asyncio.get_running_loop().create_future()
        self._waiting.append(room)
        try:
            await room
        finally:
            if not room.done():
                room.cancel()

    def _release(self, key: _Key, connection: _Connection) -> None:
        if connection.reusable and not connection.closed and not self._closed:
            connection.idle_since = time.monotonic()
            self._idle[key].append(connection)
            self._notify()
        else:
            self._discard(connection)  # which wakes a waiter too

    def _discard(self, connection: _Connection) -> None:
        connection.abort()
        self._forget_one()

    def _forget_one(self) -> None:
        self._open -= 1
        self._notify()

    def _notify(self) -> None:
        """Wake the longest-waiting request, if any, to take the room just made."""
        while self._waiting:
            room = self._waiting.popleft()
            if not room.done():
                room.set_result(None)
                return

    def _close_one_idle(self) -> bool:
        """Make room by closing the longest-idle connection to any address; whether there was one."""
        candidates = [(c.idle_since, key) for key, idle in self._idle.items() for c in idle[:1]]
        if not candidates:
            return False
        _, key = min(candidates)
        self._discard(self._idle[key].pop(0))
        return True

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            while idle:
                self._discard(idle.pop())
