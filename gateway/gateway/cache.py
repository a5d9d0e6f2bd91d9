"""Optional response cache for deterministic predictions (tabular and nlp; vision only if enabled).

A cached answer is keyed by the route, the versions of the models behind the service, and a hash of
the canonical input (a JSON body parsed and re-serialised with sorted keys, plus the query), so a new
model version never serves an old answer and `{"a": 1, "b": 2}` hits the same entry as `{"b":2,"a":1}`.
Entries expire after a TTL. Redis when configured (shared by every gateway replica), otherwise a
bounded in-process store.
"""

from __future__ import annotations

import hashlib
import logging
import time
from abc import ABC, abstractmethod
from collections import OrderedDict

from prometheus_client import Counter

from gateway.redis_client import make_redis, with_reconnect

logger = logging.getLogger("gateway.cache")

# By service, never by path: paths are whatever clients send.
CACHE_LOOKUPS = Counter("modelgate_response_cache_total", "Response cache lookups.", ["service", "result"])


def cache_key(path: str, model_versions: str, canonical_input: bytes) -> str:
    """The entry name for one input on one route and one set of model versions."""
    digest = hashlib.sha256(canonical_input).hexdigest()
    return f"modelgate:cache:{path}:{hashlib.sha256(model_versions.encode()).hexdigest()[:16]}:{digest}"


class ResponseCache(ABC):
    """Extension point: where cached answers live. Failures never fail a request: a miss instead."""

    def __init__(self, ttl_seconds: float) -> None:
        self.ttl_seconds = ttl_seconds

    @abstractmethod
    async def get(self, key: str) -> bytes | None:
        """The cached body, or None."""

    @abstractmethod
    async def put(self, key: str, body: bytes) -> None:
        """Store a body for `ttl_seconds`."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class MemoryResponseCache(ResponseCache):
    """Per-process LRU with expiry, bounded so that a stream of unique inputs cannot grow it forever."""

    def __init__(self, ttl_seconds: float, max_entries: int = 10_000) -> None:
        super().__init__(ttl_seconds)
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            self._entries.pop(key, None)
            return None
        self._entries.move_to_end(key)
        return entry[1]

    async def put(self, key: str, body: bytes) -> None:
        self._entries[key] = (time.monotonic() + self.ttl_seconds, body)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


class RedisResponseCache(ResponseCache):
    """Entries in Redis with a TTL, shared by every gateway worker and replica."""

    def __init__(self, url: str, ttl_seconds: float, timeout: float) -> None:
        super().__init__(ttl_seconds)
        self.redis = make_redis(url, timeout)

    async def get(self, key: str) -> bytes | None:
        try:
            value = await with_reconnect(self.redis, lambda: self.redis.get(key))
        except Exception as exc:  # noqa: BLE001 - a cache outage is a miss, never an error
            logger.warning("response cache unavailable", extra={"error": repr(exc)})
            return None
        return bytes(value) if value is not None else None

    async def put(self, key: str, body: bytes) -> None:
        try:
            await with_reconnect(
                self.redis, lambda: self.redis.set(key, body, px=int(self.ttl_seconds * 1000))
            )
        except Exception as exc:  # noqa: BLE001 - a cache outage only costs the next hit
            logger.warning("response cache unavailable", extra={"error": repr(exc)})

    async def close(self) -> None:
        await self.redis.aclose()
