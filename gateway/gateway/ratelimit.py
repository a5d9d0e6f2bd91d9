"""Per-key rate limits: GCRA (a token bucket with no refill loop), atomic in Redis, shared by every
gateway worker and replica; an in-process store when Redis is not configured.

GCRA keeps one number per key, the "theoretical arrival time" (TAT). Each request moves it forward by
one emission interval T = 1/rate; a request is refused when that would put TAT more than the burst
ahead of now. Redis runs the whole check-and-update as one Lua script, with Redis's own clock, so
replicas with skewed clocks still agree.
"""

from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

from prometheus_client import Counter

from gateway.redis_client import make_redis, with_reconnect

logger = logging.getLogger("gateway.ratelimit")

# Labelled by which limit refused, never by key: label values must stay few, and key names are the
# operator's (often a customer's name); the access log has the key name of each refusal.
RATE_LIMITED = Counter(
    "modelgate_rate_limited_total",
    "Requests refused with 429, by the limit that refused them: the key's own or the default.",
    ["limit"],
)
RATE_LIMIT_ERRORS = Counter(
    "modelgate_rate_limit_store_errors_total",
    "Rate-limit checks that could not reach the store.",
    ["outcome"],
)


@dataclass(frozen=True, slots=True)
class Limit:
    """`rate` requests per second on average, up to `burst` at once."""

    rate: float
    burst: int


def limit_source(rate: float | None, burst: int | None) -> Literal["key", "default"]:
    """The `limit` label of `RATE_LIMITED` for a key with this rate and burst of its own (None: none)."""
    return "key" if rate is not None or burst is not None else "default"


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: float  # until the bucket is full again
    retry_after_seconds: float  # 0 when allowed


def _decide(limit: Limit, now_ms: float, tat_ms: float | None) -> tuple[Decision, float | None]:
    """The GCRA step in Python (the Lua script mirrors it); returns the decision and the new TAT."""
    interval = 1000.0 / limit.rate
    capacity = interval * limit.burst  # how far ahead of now TAT may run
    tat = max(tat_ms if tat_ms is not None else now_ms, now_ms)
    new_tat = tat + interval
    if new_tat - now_ms > capacity:
        retry = new_tat - capacity - now_ms
        return Decision(False, limit.burst, 0, (tat - now_ms) / 1000, retry / 1000), None
    # The epsilon absorbs float rounding: (now + T) - now can come out a hair above T, which would
    # report one token fewer than there is.
    remaining = math.floor((capacity - (new_tat - now_ms)) / interval + 1e-9)
    return Decision(True, limit.burst, remaining, (new_tat - now_ms) / 1000, 0.0), new_tat


class RateLimiter(ABC):
    """Extension point: where the per-key state lives."""

    @abstractmethod
    async def hit(self, key: str, limit: Limit) -> Decision:
        """Count one request for `key`; raise on store failure."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class MemoryRateLimiter(RateLimiter):
    """Per-process state: exact for one worker; with N workers each allows the full rate."""

    def __init__(self) -> None:
        self._tat: dict[str, float] = {}

    async def hit(self, key: str, limit: Limit) -> Decision:
        now = time.monotonic() * 1000
        decision, new_tat = _decide(limit, now, self._tat.get(key))
        if new_tat is not None:
            self._tat[key] = new_tat
        return decision


# KEYS[1]: state key. ARGV: interval ms, burst. Returns {allowed, remaining, reset ms, retry ms}.
_GCRA_LUA = """
local interval = tonumber(ARGV[1])
local capacity = interval * tonumber(ARGV[2])
local t = redis.call('TIME')
local now = t[1] * 1000 + t[2] / 1000
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval
if new_tat - now > capacity then
  return {0, 0, tostring(tat - now), tostring(new_tat - capacity - now)}
end
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil(new_tat - now) + 1000)
return {1, math.floor((capacity - (new_tat - now)) / interval + 1e-9), tostring(new_tat - now), '0'}
"""


class RedisRateLimiter(RateLimiter):
    """State in Redis, one atomic script per request."""

    def __init__(self, url: str, timeout: float) -> None:
        self.redis = make_redis(url, timeout)
        self._script = self.redis.register_script(_GCRA_LUA)

    async def hit(self, key: str, limit: Limit) -> Decision:
        interval = 1000.0 / limit.rate
        allowed, remaining, reset_ms, retry_ms = await with_reconnect(
            self.redis,
            lambda: self._script(keys=[f"modelgate:ratelimit:{key}"], args=[interval, limit.burst]),
        )
        return Decision(
            bool(allowed), limit.burst, int(remaining), float(reset_ms) / 1000, float(retry_ms) / 1000
        )

    async def close(self) -> None:
        await self.redis.aclose()


def headers_for(decision: Decision) -> dict[str, str]:
    """The IETF draft's `RateLimit-*` headers, plus `Retry-After` on a refusal."""
    headers = {
        "ratelimit-limit": str(decision.limit),
        "ratelimit-remaining": str(decision.remaining),
        "ratelimit-reset": str(math.ceil(decision.reset_seconds)),
    }
    if not decision.allowed:
        headers["retry-after"] = str(max(1, math.ceil(decision.retry_after_seconds)))
    return headers
