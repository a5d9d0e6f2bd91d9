"""The Redis key store against a real redis-server: what every gateway replica shares."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from gateway.keys import RedisKeyStore


def test_redis_store_round_trip_and_revocation(redis_url: str) -> None:
    async def scenario() -> None:
        writer, reader = RedisKeyStore(redis_url, cache_seconds=0), RedisKeyStore(redis_url, cache_seconds=0)
        key, record = await writer.create("replica-test", ("vision",))
        # A second store (another gateway replica) sees the key at once.
        assert await reader.authenticate(key) == record
        assert await reader.authenticate(key + "x") is None
        raw = await writer.redis.hgetall("modelgate:api-keys")
        assert key.encode() not in b"".join(k + v for k, v in raw.items())
        assert await writer.remove("replica-test")
        assert await reader.authenticate(key) is None
        assert await reader.ping()
        await writer.close()
        await reader.close()

    asyncio.run(scenario())


def test_cli_uses_redis_when_configured(redis_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {**os.environ, "REDIS_URL": redis_url, "API_KEYS_FILE": str(tmp_path / "unused.json")}
    created = subprocess.run(
        [sys.executable, "-m", "gateway.keys", "create", "--name", "cli-redis", "--scopes", "nlp"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert not (tmp_path / "unused.json").exists()

    async def check() -> None:
        store = RedisKeyStore(redis_url)
        assert (await store.authenticate(created.stdout.strip())) is not None
        await store.close()

    asyncio.run(check())


def test_unreachable_redis_is_not_ready() -> None:
    async def scenario() -> bool:
        store = RedisKeyStore("redis://127.0.0.1:1/0")
        try:
            return await store.ping()
        finally:
            await store.close()

    assert asyncio.run(scenario()) is False


def test_redis_response_cache_shared_with_ttl(redis_url: str) -> None:
    from gateway.cache import RedisResponseCache

    async def scenario() -> tuple[bytes | None, bytes | None, bytes | None]:
        writer, reader = RedisResponseCache(redis_url, 0.2, 1.0), RedisResponseCache(redis_url, 0.2, 1.0)
        await writer.put("modelgate:cache:test", b'{"label":"setosa"}')
        shared = await reader.get("modelgate:cache:test")
        await asyncio.sleep(0.3)
        expired = await reader.get("modelgate:cache:test")
        down = RedisResponseCache("redis://127.0.0.1:1/0", 1.0, 0.2)
        outage = await down.get("anything")  # an outage is a miss, not an error
        for cache in (writer, reader, down):
            await cache.close()
        return shared, expired, outage

    assert asyncio.run(scenario()) == (b'{"label":"setosa"}', None, None)
