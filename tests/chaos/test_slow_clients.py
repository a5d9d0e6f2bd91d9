"""Hostile clients against the gateway: a slow loris (many connections, headers one byte a second, never
finished) and a client that sends header lines forever. While they run, normal requests get 200 in
bounded time; the gateway cuts the slow ones off after HEADER_TIMEOUT (408) and the endless one after
MAX_HEADER_BYTES (431), so neither holds a connection or memory for as long as it likes
(core/modelgate_core/gunicorn_conf.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import httpx
import psutil
import pytest

from devstack import LocalStack

from .conftest import HEADER_TIMEOUT, IRIS, SCALE, children

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

LORIS_CONNECTIONS = int(200 * SCALE)
NORMAL_BOUND = 2.0  # seconds for a tabular request while the hostile clients run
# Where the endless client must have been stopped: the header limit plus what socket buffers on both
# sides absorb before the gateway reads it (loopback buffers grow to a few MiB).
ENDLESS_CUTOFF = 16 * 1024 * 1024
RSS_GROWTH_BOUND = 64 * 1024 * 1024


async def slow_loris(host: str, port: int, until: float) -> tuple[float, bytes]:
    """One connection sending a request's headers a byte a second; (seconds until the gateway closed
    it, what it answered). Gives up at `until` (the connection still open: the time is inf)."""
    opened = time.monotonic()
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"POST /v1/tabular/iris HTTP/1.1\r\nHost: chaos\r\n")
    received = b""
    try:
        while time.monotonic() < until:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), timeout=1.0)
            except TimeoutError:
                writer.write(b"X")  # one more byte of a header name that never ends
                continue
            if not chunk:
                return time.monotonic() - opened, received
            received += chunk
    except (ConnectionError, OSError):
        return time.monotonic() - opened, received
    finally:
        writer.close()
    return float("inf"), received


async def endless_headers(host: str, port: int, until: float) -> tuple[int, bytes]:
    """Header lines as fast as the gateway takes them, reading its answers meanwhile (as an HTTP
    client does); (bytes sent before its answer came, what it answered)."""
    reader, writer = await asyncio.open_connection(host, port)
    received = bytearray()

    async def read() -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while chunk := await reader.read(65536):
                received.extend(chunk)

    reading = asyncio.create_task(read())
    writer.write(b"POST /v1/tabular/iris HTTP/1.1\r\nHost: chaos\r\n")
    batch = (b"X-Filler: " + b"a" * 1000 + b"\r\n") * 64
    sent = 0
    with contextlib.suppress(ConnectionError, OSError):
        while time.monotonic() < until and sent < 4 * ENDLESS_CUTOFF and not received:
            writer.write(batch)
            await writer.drain()
            sent += len(batch)
            await asyncio.sleep(0)  # drain() need not yield; the reader must get its turn
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(reading, timeout=5.0)
    writer.close()
    return sent, bytes(received)


async def normal_requests(base_url: str, key: str, until: float) -> list[tuple[int, float]]:
    results: list[tuple[int, float]] = []
    async with httpx.AsyncClient(base_url=base_url, headers={"X-API-Key": key}, timeout=10) as client:
        while time.monotonic() < until:
            started = time.monotonic()
            try:
                status = (await client.post("/v1/tabular/iris", json=IRIS)).status_code
            except httpx.HTTPError:
                status = 0
            results.append((status, time.monotonic() - started))
            await asyncio.sleep(0.1)
    return results


async def test_slow_and_endless_headers_do_not_exhaust_the_gateway(
    chaos_stack: LocalStack, chaos_key: str, report: dict[str, object]
) -> None:
    host, port = "127.0.0.1", chaos_stack.ports["gateway"]
    (worker,) = children(chaos_stack.processes["gateway"].pid)
    rss_before = psutil.Process(worker).memory_info().rss
    until = time.monotonic() + HEADER_TIMEOUT + 4.0 * SCALE
    loris = [asyncio.create_task(slow_loris(host, port, until)) for _ in range(LORIS_CONNECTIONS)]
    endless = asyncio.create_task(endless_headers(host, port, until))
    normal = await normal_requests(chaos_stack.url("gateway"), chaos_key, until)
    closed = await asyncio.gather(*loris)
    sent, answer = await endless
    rss_growth = psutil.Process(worker).memory_info().rss - rss_before

    worst_close = max(seconds for seconds, _ in closed)
    report.update(
        loris_connections=LORIS_CONNECTIONS,
        loris_worst_close_s=None if worst_close == float("inf") else round(worst_close, 3),
        loris_answers=sorted({answer[:12].decode(errors="replace") for _, answer in closed}),
        endless_bytes_sent=sent,
        endless_answer=answer[:80].decode(errors="replace"),
        gateway_rss_growth_bytes=rss_growth,
        normal_requests=len(normal),
        normal_worst_s=round(max(latency for _, latency in normal), 3),
        normal_statuses=sorted({status for status, _ in normal}),
        line=f"{LORIS_CONNECTIONS} slow connections closed within {worst_close:.1f} s, endless headers cut "
        f"after {sent / 1e6:.1f} MB, {len(normal)} normal requests (worst "
        f"{max(latency for _, latency in normal):.2f} s), gateway RSS +{rss_growth / 1e6:.1f} MB",
    )

    assert normal and all(status == 200 for status, _ in normal), sorted({s for s, _ in normal})
    assert max(latency for _, latency in normal) <= NORMAL_BOUND
    # Every slow connection was answered 408 and closed by the gateway, soon after HEADER_TIMEOUT.
    assert worst_close <= HEADER_TIMEOUT + 2.0
    assert all(answer.startswith(b"HTTP/1.1 408 ") for _, answer in closed)
    # The endless one was refused (431) long before it could fill the gateway's memory.
    assert sent < ENDLESS_CUTOFF
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "headers_too_large"
    assert rss_growth < RSS_GROWTH_BOUND
    assert children(chaos_stack.processes["gateway"].pid) == [worker]
