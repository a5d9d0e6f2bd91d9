"""The aiohttp transport over real sockets: each way a service can fail reaches the client as the
gateway error that says what happened, and only a request that was never sent is retried.

The "services" are raw asyncio TCP servers that misbehave on purpose, so every failure is the real
aiohttp one (not a MockTransport's idea of it).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from gateway.transport import AiohttpTransport
from gateway.upstream import Upstream, UpstreamClient
from modelgate_core.errors import BadGateway, GatewayTimeout, ServiceUnavailable

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{"ok":true}'


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One whole HTTP request (headers, then a Content-Length body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


@asynccontextmanager
async def service(behaviour: Behaviour) -> AsyncIterator[tuple[int, list[bytes]]]:
    """A TCP server on a free port running `behaviour` per connection; yields the port and the
    requests it has read."""
    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await behaviour(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def recording(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        original = reader.readuntil

        async def readuntil(separator: bytes = b"\n") -> bytes:
            data = await original(separator)
            if separator == b"\r\n\r\n":
                received.append(data)
            return data

        reader.readuntil = readuntil  # type: ignore[method-assign,assignment]  # counts requests
        await handle(reader, writer)

    server = await asyncio.start_server(recording, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, received
    finally:
        server.close()
        await server.wait_closed()


def refused_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def client(port: int, read_timeout: float = 2.0) -> AsyncIterator[tuple[UpstreamClient, Upstream]]:
    transport = AiohttpTransport(max_connections=8, keepalive_seconds=4.0)
    try:
        yield (
            UpstreamClient(transport, connect_timeout=1.0),
            Upstream("tabular", f"http://127.0.0.1:{port}", read_timeout),
        )
    finally:
        await transport.aclose()


async def infer(upstream_client: UpstreamClient, upstream: Upstream) -> None:
    await upstream_client.request(
        upstream, "POST", "/v2/models/iris/infer", content=b'{"inputs":[]}', content_type="application/json"
    )


async def test_a_good_answer_passes() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK)
        await writer.drain()

    async with service(answer) as (port, received), client(port) as (upstream_client, upstream):
        response = await upstream_client.request(upstream, "POST", "/v2/models/iris/infer", content=b"{}")
    assert (response.status_code, response.content) == (200, b'{"ok":true}')
    assert len(received) == 1


async def test_a_refused_connection_is_503_after_retries() -> None:
    async with client(refused_port()) as (upstream_client, upstream):
        with pytest.raises(ServiceUnavailable, match="tabular service is unavailable"):
            await infer(upstream_client, upstream)


async def test_a_service_dying_mid_request_is_502_and_the_post_is_not_sent_again() -> None:
    async def die(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)  # the service has the request, then its process goes away

    async with service(die) as (port, received), client(port) as (upstream_client, upstream):
        with pytest.raises(BadGateway, match="closed the connection"):
            await infer(upstream_client, upstream)
    assert len(received) == 1


async def test_a_reset_after_the_request_was_sent_is_502_and_not_retried() -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()  # RST, not FIN

    async with service(reset) as (port, received), client(port) as (upstream_client, upstream):
        with pytest.raises(BadGateway):
            await infer(upstream_client, upstream)
    assert len(received) == 1


async def test_an_answer_that_is_not_http_is_502() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()

    async with service(garbage) as (port, received), client(port) as (upstream_client, upstream):
        with pytest.raises(BadGateway):
            await infer(upstream_client, upstream)
    assert len(received) == 1


async def test_a_truncated_body_is_502() -> None:
    async def truncated(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{"ok"')
        await writer.drain()

    async with service(truncated) as (port, received), client(port) as (upstream_client, upstream):
        with pytest.raises(BadGateway, match="closed the connection"):
            await infer(upstream_client, upstream)
    assert len(received) == 1


async def test_a_service_that_does_not_answer_in_time_is_504_and_not_retried() -> None:
    answered = asyncio.Event()

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await answered.wait()

    async with (
        service(stall) as (port, received),
        client(port, read_timeout=0.3) as (upstream_client, upstream),
    ):
        with pytest.raises(GatewayTimeout):
            await infer(upstream_client, upstream)
        answered.set()
    assert len(received) == 1


@pytest.mark.parametrize("kind", ["aiohttp", "httpx"])
async def test_both_transports_read_the_same_answer(kind: str) -> None:
    from gateway.transport import make_transport

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await read_request(reader)
        body = request.split(b"\r\n\r\n", 1)[1]
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
            + b"inference-header-content-length: 2\r\ncontent-length: %d\r\n\r\n" % len(body)
            + body
        )
        await writer.drain()

    async with service(answer) as (port, _):
        transport = make_transport(kind, 4, 4.0)  # type: ignore[arg-type]
        try:
            request = httpx.Request("POST", f"http://127.0.0.1:{port}/x?a=1", content=b"{}\x00\x01")
            response = await transport.handle_async_request(request)
            await response.aread()
        finally:
            await transport.aclose()
    assert response.status_code == 200
    assert response.content == b"{}\x00\x01"
    assert response.headers["inference-header-content-length"] == "2"
