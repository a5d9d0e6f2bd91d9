"""The gateway's Redis access: short timeouts, and one reconnect when the server has restarted."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from gateway.metrics import REDIS_ERRORS

T = TypeVar("T")


def make_redis(url: str, timeout: float) -> Any:
    """An asyncio Redis client that never waits longer than `timeout` per operation."""
    import redis.asyncio as redis

    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


async def with_reconnect(client: Any, call: Callable[[], Awaitable[T]]) -> T:
    """Run `call`; if the connection turns out dead, drop the pool's connections and try once more.

    After a Redis restart every pooled connection is dead, and redis-py's own retry re-uses the dead
    socket (seen with redis-py 8: each worker's first command failed). A Redis that is really down
    still fails fast on the second try, and the caller maps that to its documented behaviour.
    """
    from redis.exceptions import ConnectionError as RedisConnectionError

    try:
        try:
            return await call()
        except RedisConnectionError:
            await client.connection_pool.disconnect()
            return await call()
    except Exception:
        REDIS_ERRORS.inc()
        raise
