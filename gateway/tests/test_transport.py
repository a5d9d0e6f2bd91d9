"""The gateway's transports over real sockets: each way a service can fail reaches the client as the
gateway error that says what happened, and only a request that was never sent is retried. Every test
runs on both of the gateway's own transports, `httptools` (gateway.http1, the default) and `aiohttp`.

The "services" are raw asyncio TCP servers that misbehave on purpose, so every failure is the real
one of each client (not a MockTransport's idea of it).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from gateway.transport import make_transport
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


def answer_once(answer: bytes) -> Behaviour:
    """A service that reads one request, writes `answer` and closes the connection."""

    async def behaviour(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer)
        await writer.drain()

    return behaviour


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


@pytest.fixture(params=["httptools", "aiohttp"])
def kind(request: pytest.FixtureRequest) -> str:
    """Each of the gateway's own transports."""
    return str(request.param)


@asynccontextmanager
async def client(
    kind: str, port: int, read_timeout: float = 2.0, max_connections: int = 8
) -> AsyncIterator[tuple[UpstreamClient, Upstream]]:
    transport = make_transport(kind, max_connections, keepalive_seconds=4.0)  # type: ignore[arg-type]
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


@pytest.mark.parametrize(
    "answer",
    [
        OK,
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
        b'6\r\n{"ok":\r\n5\r\ntrue}\r\n0\r\n\r\n',
        b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n{"ok":true}',
    ],
    ids=["content-length", "chunked", "until-close"],
)
async def test_a_good_answer_is_read_whole(kind: str, answer: bytes) -> None:
    async with (
        service(answer_once(answer)) as (port, received),
        client(kind, port) as (upstream_client, upstream),
    ):
        response = await upstream_client.request(upstream, "POST", "/v2/models/iris/infer", content=b"{}")
    assert (response.status_code, response.content) == (200, b'{"ok":true}')
    assert len(received) == 1


async def test_a_refused_connection_is_503_after_retries(kind: str) -> None:
    async with client(kind, refused_port()) as (upstream_client, upstream):
        with pytest.raises(ServiceUnavailable, match="tabular service is unavailable"):
            await infer(upstream_client, upstream)


async def test_a_service_dying_mid_request_is_502_and_the_post_is_not_sent_again(kind: str) -> None:
    async def die(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)  # the service has the request, then its process goes away

    async with service(die) as (port, received), client(kind, port) as (upstream_client, upstream):
        with pytest.raises(BadGateway, match="closed the connection"):
            await infer(upstream_client, upstream)
    assert len(received) == 1


async def test_a_reset_after_the_request_was_sent_is_502_and_not_retried(kind: str) -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()  # RST, not FIN

    async with service(reset) as (port, received), client(kind, port) as (upstream_client, upstream):
        with pytest.raises(BadGateway):
            await infer(upstream_client, upstream)
    assert len(received) == 1


async def test_an_answer_that_is_not_http_is_502(kind: str) -> None:
    garbage = answer_once(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    async with service(garbage) as (port, received), client(kind, port) as (upstream_client, upstream):
        with pytest.raises(BadGateway):
            await infer(upstream_client, upstream)
    assert len(received) == 1


async def test_a_truncated_body_is_502(kind: str) -> None:
    truncated = answer_once(
        b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{"ok"'
    )
    async with service(truncated) as (port, received), client(kind, port) as (upstream_client, upstream):
        with pytest.raises(BadGateway, match="closed the connection"):
            await infer(upstream_client, upstream)
    assert len(received) == 1


async def test_a_service_that_does_not_answer_in_time_is_504_and_not_retried(kind: str) -> None:
    answered = asyncio.Event()

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await answered.wait()

    async with (
        service(stall) as (port, received),
        client(kind, port, read_timeout=0.3) as (upstream_client, upstream),
    ):
        with pytest.raises(GatewayTimeout):
            await infer(upstream_client, upstream)
        answered.set()
    assert len(received) == 1


@pytest.mark.parametrize("kind", ["httptools", "aiohttp", "httpx"])
async def test_every_transport_reads_the_same_answer(kind: str) -> None:
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


async def answer_each(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answer: bytes) -> None:
    """Answer every request on the connection with `answer`, until the client closes it."""
    while True:
        try:
            await read_request(reader)
        except asyncio.IncompleteReadError:
            return
        writer.write(answer)
        await writer.drain()


async def test_a_connection_is_kept_for_the_next_request(kind: str) -> None:
    connections = 0

    async def keep(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await answer_each(reader, writer, OK)

    async with service(keep) as (port, received), client(kind, port) as (upstream_client, upstream):
        for _ in range(3):
            await infer(upstream_client, upstream)
    assert (len(received), connections) == (3, 1)


async def test_a_connection_the_service_closes_is_not_used_again(kind: str) -> None:
    connections = 0
    closing = OK.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n", 1)

    async def close_after_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_request(reader)
        writer.write(closing)
        await writer.drain()

    async with (
        service(close_after_one) as (port, received),
        client(kind, port) as (upstream_client, upstream),
    ):
        for _ in range(3):
            await infer(upstream_client, upstream)
    assert (len(received), connections) == (3, 3)


async def test_the_pool_bound_holds_under_concurrent_requests(kind: str) -> None:
    open_now = most = 0
    release, both_busy = asyncio.Event(), asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_now, most
        open_now += 1
        most = max(most, open_now)
        try:
            while True:
                try:
                    await read_request(reader)
                except asyncio.IncompleteReadError:
                    return
                if len(received) == 2:
                    both_busy.set()
                await release.wait()
                writer.write(OK)
                await writer.drain()
        finally:
            open_now -= 1

    async with (
        service(slow) as (port, received),
        client(kind, port, max_connections=2) as (upstream_client, upstream),
    ):
        calls = [asyncio.create_task(infer(upstream_client, upstream)) for _ in range(6)]
        await both_busy.wait()  # both connections busy; the other four wait for one
        release.set()
        await asyncio.gather(*calls)
    assert (len(received), most) == (6, 2)


async def test_a_head_answer_ends_at_its_headers(kind: str) -> None:
    async def head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await answer_each(
            reader, writer, b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n"
        )

    async with service(head) as (port, _), client(kind, port) as (upstream_client, upstream):
        response = await upstream_client.request(upstream, "HEAD", "/v1/tabular/models")
    assert (response.status_code, response.content) == (200, b"")


async def test_a_request_whose_caller_left_does_not_spoil_the_next(kind: str) -> None:
    first, gone = asyncio.Event(), asyncio.Event()

    async def late_then_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        if not first.is_set():
            first.set()
            await gone.wait()  # answers after the caller has gone
            writer.write(
                b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 12\r\n\r\n{"old":true}'
            )
            await writer.drain()
            await reader.read()
            return
        writer.write(OK)
        await writer.drain()
        await answer_each(reader, writer, OK)

    async with service(late_then_ok) as (port, _), client(kind, port) as (upstream_client, upstream):
        call = asyncio.create_task(infer(upstream_client, upstream))
        await first.wait()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        gone.set()
        response = await upstream_client.request(upstream, "POST", "/v2/models/iris/infer", content=b"{}")
    assert response.content == b'{"ok":true}'


def test_the_default_transport_runs_on_uvloop() -> None:
    # The gateway's workers run uvloop, whose transports are not asyncio's classes; the tests above run
    # on asyncio's own loop.
    import uvloop

    async def scenario() -> tuple[list[bytes], list[bytes]]:
        async def keep(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await answer_each(reader, writer, OK)

        async with (
            service(keep) as (port, received),
            client("httptools", port) as (upstream_client, upstream),
        ):
            bodies = [
                (
                    await upstream_client.request(upstream, "POST", "/v2/models/iris/infer", content=b"{}")
                ).content
                for _ in range(2)
            ]
        return bodies, received

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        bodies, received = runner.run(scenario())
    assert bodies == [b'{"ok":true}'] * 2 and len(received) == 2
