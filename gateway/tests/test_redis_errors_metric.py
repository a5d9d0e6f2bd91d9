"""`modelgate_redis_errors_total` (the alert on Redis errors reads it) against a real redis-server: a
command that fails counts once, a command that succeeds after the reconnect on a dead connection (a
Redis restart) does not count.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from gateway.redis_client import make_redis, with_reconnect


def redis_errors() -> float:
    value = REGISTRY.get_sample_value("modelgate_redis_errors_total")
    assert value is not None, "modelgate_redis_errors_total is not registered"
    return value


class Server:
    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: run scripts/ensure_test_services.sh (make test does)")
        self.binary = binary
        self.workdir = workdir
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import redis

        where = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir)]
        self.proc = subprocess.Popen(
            [self.binary, *where, "--save", ""],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        probe = redis.Redis(host="127.0.0.1", port=self.port)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if probe.ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        pytest.fail("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    started = Server(tmp_path)
    started.start()
    yield started
    started.stop()


def test_failed_commands_count_and_a_reconnect_that_works_does_not(server: Server) -> None:
    import redis

    async def scenario() -> tuple[float, float, float]:
        client = make_redis(f"redis://127.0.0.1:{server.port}/0", timeout=1.0)
        try:
            before = redis_errors()
            assert await with_reconnect(client, lambda: client.set("k", "v")) is True
            after_success = redis_errors()
            # A restart leaves the pooled connection dead: the one reconnect answers, nothing counts.
            server.stop()
            server.start()
            assert await with_reconnect(client, lambda: client.get("k")) is None
            after_restart = redis_errors()
            server.stop()
            with pytest.raises(redis.ConnectionError):
                await with_reconnect(client, lambda: client.get("k"))
            return after_success - before, after_restart - before, redis_errors() - before
        finally:
            await client.aclose()

    success, restart, failure = asyncio.run(scenario())
    assert (success, restart, failure) == (0.0, 0.0, 1.0)
