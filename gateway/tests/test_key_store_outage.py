"""The Redis key store through a Redis outage, against a real redis-server that the tests stop and start.

A key that Redis confirmed recently keeps working while Redis is down; a key the store cannot vouch
for is a 503 (it cannot be verified), never a 401; once Redis is back, everything is asked again. The
store's clock is a test clock, so "past the cache" and "past the grace period" need no sleeping;
Redis itself and its timeouts are real.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from gateway.app import create_app
from gateway.config import GatewaySettings
from gateway.keys import KeyStoreUnavailable, RedisKeyStore, hash_key, store_from_settings
from gateway.lru import Lru

FakeServices = Any  # conftest.FakeServices (conftest is not importable from here)
IRIS = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


class Clock:
    """The store's notion of time, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RedisServer:
    """A redis-server of our own on a free port, with an append-only file so keys survive a restart."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: run scripts/ensure_test_services.sh (make test does)")
        self.binary = binary
        self.workdir = workdir
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import redis

        where = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir)]
        self.proc = subprocess.Popen(
            [self.binary, *where, "--save", "", "--appendonly", "yes", "--appendfsync", "always"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        client = redis.Redis(host="127.0.0.1", port=self.port)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        self.stop()
        pytest.fail("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def outage_count(outcome: str) -> float:
    return REGISTRY.get_sample_value("modelgate_key_store_outage_total", {"outcome": outcome}) or 0.0


async def create_keys(url: str, *names: str) -> list[str]:
    """Keys made by another store (another replica, or the CLI): the store under test has not seen them."""
    writer = RedisKeyStore(url)
    try:
        return [(await writer.create(name, ("tabular",)))[0] for name in names]
    finally:
        await writer.close()


async def test_confirmed_keys_work_through_an_outage_and_others_are_unverifiable(
    redis_server: RedisServer,
) -> None:
    seen, unseen = await create_keys(redis_server.url, "seen", "unseen")
    clock = Clock()
    store = RedisKeyStore(
        redis_server.url, cache_seconds=5, outage_grace_seconds=60, retry_seconds=1, clock=clock
    )
    try:
        assert (record := await store.authenticate(seen)) is not None
        assert await store.authenticate("mg_never-issued") is None  # Redis answers: unknown is a 401

        redis_server.stop()
        clock.advance(6)  # past the cache: this lookup goes to Redis, which is gone
        served = outage_count("served_confirmed")
        assert await store.authenticate(seen) == record
        assert outage_count("served_confirmed") == served + 1
        # Redis would know `unseen`, but it cannot be asked: neither a 401 nor a pass.
        for key in (unseen, "mg_never-issued"):
            with pytest.raises(KeyStoreUnavailable) as refused:
                await store.authenticate(key)
            assert refused.value.status_code == 503
            assert refused.value.headers == {"retry-after": "1"}

        clock.advance(60)  # 66 s since Redis last confirmed it: past the grace period
        with pytest.raises(KeyStoreUnavailable):
            await store.authenticate(seen)

        redis_server.start()
        # Redis is left alone for `retry_seconds` after a failure; the grace has run out meanwhile.
        with pytest.raises(KeyStoreUnavailable):
            await store.authenticate(seen)
        clock.advance(1)
        assert await store.authenticate(seen) == record
        assert (await store.authenticate(unseen)) is not None
        assert await store.authenticate("mg_never-issued") is None
    finally:
        await store.close()


async def test_a_key_revoked_while_redis_answers_is_not_revived_by_an_outage(
    redis_server: RedisServer,
) -> None:
    (key,) = await create_keys(redis_server.url, "revoked")
    clock = Clock()
    store = RedisKeyStore(redis_server.url, cache_seconds=5, outage_grace_seconds=60, clock=clock)
    try:
        assert await store.authenticate(key) is not None
        assert await store.remove("revoked")
        clock.advance(6)
        assert await store.authenticate(key) is None  # Redis says: gone; the confirmed record goes too
        redis_server.stop()
        clock.advance(6)
        with pytest.raises(KeyStoreUnavailable):
            await store.authenticate(key)
    finally:
        await store.close()


def test_through_the_gateway_recent_key_200_unknown_503_then_recovery(
    redis_server: RedisServer, settings: GatewaySettings, services: FakeServices
) -> None:
    seen, unseen = asyncio.run(create_keys(redis_server.url, "http-seen", "http-unseen"))
    clock = Clock()
    store = RedisKeyStore(redis_server.url, cache_seconds=5, retry_seconds=1, clock=clock)
    app = create_app(settings, transport=httpx.MockTransport(services))

    def call(key: str) -> Any:  # the TestClient's response type
        return client.post("/v1/tabular/iris", json=IRIS, headers={"X-API-Key": key})

    with TestClient(app, raise_server_exceptions=False) as client:
        # Keys from this Redis, as a gateway with REDIS_URL has; the rest of the app as configured.
        app.state.gateway.keys = store
        try:
            assert call(seen).status_code == 200
            redis_server.stop()
            clock.advance(6)
            assert call(seen).status_code == 200
            for key in (unseen, "mg_nope"):
                refused = call(key)
                assert refused.status_code == 503, refused.text
                assert refused.headers["retry-after"] == "1"
                error = refused.json()["error"]
                assert error["code"] == "service_unavailable"
                assert "not verified recently" in error["message"]

            redis_server.start()
            clock.advance(1)
            assert call(seen).status_code == 200
            assert call(unseen).status_code == 200
            assert call("mg_nope").status_code == 401
        finally:
            assert client.portal is not None
            client.portal.call(store.close)


async def test_unknown_keys_never_evict_known_ones_and_stay_bounded(redis_server: RedisServer) -> None:
    """A scanner's stream of unknown keys: the unknown LRU stays at its bound, and the good keys'
    records stay cached (the old store emptied its whole cache past 10,000 entries)."""
    (key,) = await create_keys(redis_server.url, "busy")
    store = RedisKeyStore(redis_server.url, cache_seconds=60, max_entries=3)
    try:
        record = await store.authenticate(key)
        assert record is not None
        for n in range(10):
            assert await store.authenticate(f"mg_scan-{n}") is None
        assert len(store._unknown) == 3
        assert hash_key("mg_scan-9") in store._unknown and hash_key("mg_scan-0") not in store._unknown
        # Still answered from the cache: Redis no longer has the key, and is not asked.
        await store.redis.delete("modelgate:api-keys")
        assert await store.authenticate(key) == record
    finally:
        await store.close()


async def test_known_keys_are_bounded_least_recently_used_first(redis_server: RedisServer) -> None:
    keys = await create_keys(redis_server.url, "k0", "k1", "k2")
    store = RedisKeyStore(redis_server.url, cache_seconds=60, max_entries=2)
    try:
        for key in keys[:2]:
            assert await store.authenticate(key) is not None
        assert await store.authenticate(keys[0]) is not None  # k0 is now the most recently used
        assert await store.authenticate(keys[2]) is not None  # so k1 goes
        assert [hash_key(k) in store._confirmed for k in keys] == [True, False, True]
    finally:
        await store.close()


def test_the_key_store_uses_the_redis_timeout_setting(tmp_path: Path) -> None:
    settings = GatewaySettings(
        redis_url="redis://:s3cret-for-tests@127.0.0.1:1/0",
        rate_limit_timeout=0.3,
        key_cache_seconds=7,
        key_cache_max_entries=42,
        key_outage_grace_seconds=120,
        api_keys_file=tmp_path / "unused.json",
    )
    store = store_from_settings(settings)
    assert isinstance(store, RedisKeyStore)
    pool = store.redis.connection_pool.connection_kwargs
    assert (pool["socket_timeout"], pool["socket_connect_timeout"], pool["password"]) == (
        0.3,
        0.3,
        "s3cret-for-tests",
    )
    assert (store.cache_seconds, store._confirmed.max_entries, store.outage_grace_seconds) == (7, 42, 120)


async def test_a_redis_that_never_answers_costs_one_timeout_then_a_503() -> None:
    """A server that accepts and says nothing (a hung Redis): the lookup gives up after the configured
    timeout, not the old fixed second, and the next lookups do not wait on it again for a while."""
    hung = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)
    port = hung.sockets[0].getsockname()[1]
    store = RedisKeyStore(f"redis://127.0.0.1:{port}/0", timeout=0.2, retry_seconds=30)
    try:
        started = time.monotonic()
        with pytest.raises(KeyStoreUnavailable):
            await store.authenticate("mg_any")
        first = time.monotonic() - started
        started = time.monotonic()
        with pytest.raises(KeyStoreUnavailable):
            await store.authenticate("mg_other")
        second = time.monotonic() - started
        assert 0.2 <= first < 0.9, first
        assert second < 0.05, second
    finally:
        await store.close()
        hung.close()


def test_lru_forgets_the_least_recently_used() -> None:
    lru: Lru[str, int] = Lru(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1  # a is now newer than b
    lru.put("c", 3)
    assert ("a" in lru, "b" in lru, "c" in lru, len(lru)) == (True, False, True, 2)
    assert lru.pop("a") == 1 and lru.pop("a") is None
    with pytest.raises(ValueError):
        Lru(0)
