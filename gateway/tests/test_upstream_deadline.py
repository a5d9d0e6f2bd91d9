"""What the gateway tells a service about time and what it makes of a service's fast refusal, over the
real aiohttp transport and raw TCP "services": every request carries the gateway's remaining budget
(`X-Request-Deadline-Ms`, its read timeout), and a service's overload 503 (error shape, Retry-After)
passes through to the client without counting against the service in the circuit breaker.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from gateway.transport import AiohttpTransport
from gateway.upstream import Upstream, UpstreamClient
from modelgate_core.errors import ServiceUnavailable

OK = b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{"ok":true}'
BUSY_BODY = b'{"error":"Model \'iris\' is busy","code":"service_unavailable","request_id":"r"}'
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
    + f"content-length: {len(BUSY_BODY)}\r\n\r\n".encode()
    + BUSY_BODY
)
# A 503 that is not the service speaking (a proxy's page, a dying process): a failure of the service.
BROKEN = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/html\r\ncontent-length: 5\r\n\r\noops!"


@asynccontextmanager
async def service(answers: list[bytes]) -> AsyncIterator[tuple[int, list[dict[str, str]]]]:
    """A keep-alive HTTP server on a free port answering each request with the next of `answers` (the
    last one repeats); yields its port and the headers of every request it read."""
    received: list[dict[str, str]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                headers = {}
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name:
                        headers[name.strip().lower().decode()] = value.strip().decode()
                await reader.readexactly(int(headers.get("content-length", "0")))
                received.append(headers)
                writer.write(answers[min(len(received), len(answers)) - 1])
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], received
    finally:
        server.close()
        await server.wait_closed()


@asynccontextmanager
async def client(port: int, read_timeout: float) -> AsyncIterator[tuple[UpstreamClient, Upstream]]:
    transport = AiohttpTransport(max_connections=8, keepalive_seconds=4.0)
    try:
        yield (
            UpstreamClient(transport, connect_timeout=1.0),
            Upstream("tabular", f"http://127.0.0.1:{port}", read_timeout),
        )
    finally:
        await transport.aclose()


async def test_every_request_carries_the_gateways_remaining_budget() -> None:
    async with (
        service([OK]) as (port, received),
        client(port, read_timeout=2.5) as (upstream_client, upstream),
    ):
        await upstream_client.request(upstream, "POST", "/v2/models/iris/infer", content=b"{}")
        # A per-call read timeout (a model load waits longer) is the budget that call has.
        await upstream_client.request(upstream, "POST", "/v2/repository/models/iris/load", timeout=120.0)
        # A client's own value is never forwarded: the budget is the gateway's.
        await upstream_client.request(
            upstream, "GET", "/v2/models/iris", headers={"X-Request-Deadline-Ms": "999999"}
        )
    assert [r["x-request-deadline-ms"] for r in received] == ["2500", "120000", "2500"]


async def test_a_services_overload_503_passes_through_and_leaves_the_circuit_closed() -> None:
    refusals = 3 * upstream_threshold()
    answers = [BUSY] * refusals + [OK]
    async with service(answers) as (port, received), client(port, 2.0) as (gateway, upstream):
        for _ in range(refusals):
            answer = await gateway.request(upstream, "POST", "/v2/models/iris/infer", content=b"{}")
            assert (answer.status_code, answer.headers.get("retry-after")) == (503, "1")
            assert answer.content == BUSY_BODY
        # Far past the threshold, and no failure counted: the service was working as designed.
        assert (upstream.breaker.state, upstream.breaker.failures) == ("closed", 0)
        answer = await gateway.request(upstream, "POST", "/v2/models/iris/infer", content=b"{}")
        assert answer.status_code == 200
    assert len(received) == refusals + 1


async def test_a_503_that_is_not_the_services_answer_still_opens_the_circuit() -> None:
    """The other side of the rule above: only the service's own refusal is exempt."""
    async with service([BROKEN]) as (port, received), client(port, 2.0) as (upstream_client, upstream):
        for _ in range(upstream_threshold()):
            with pytest.raises(ServiceUnavailable, match=r"tabular service is unavailable$"):
                await upstream_client.request(upstream, "POST", "/v2/models/iris/infer", content=b"{}")
        assert upstream.breaker.state == "open"
        with pytest.raises(ServiceUnavailable, match="circuit open"):
            await upstream_client.request(upstream, "POST", "/v2/models/iris/infer", content=b"{}")
    assert len(received) == upstream_threshold()


def upstream_threshold() -> int:
    return Upstream("x", "http://127.0.0.1:1", 1.0).breaker.failure_threshold
