"""Failed authentications per client address: after `limit` of them within a window, that address gets
429 with `Retry-After` until the window ends, before any key lookup.

So guessing keys costs the guesser, not the key store: an unknown key is a Redis round trip (nothing
cached can answer for it), and a scanner could otherwise send as many as the gateway accepts. The
count lives in each worker's memory (bounded: the least recently seen addresses are forgotten first),
so with W workers an address gets up to W x `limit` failures per window; that bounds the work, which is
the point, without a Redis call on the path that must work while Redis is down.

A window starts at an address's first failure and lasts `window_seconds`; the count does not carry
over. Every address behind one proxy or NAT shares a count: raise the limit there, or set it to 0
(no limit).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Counter

from gateway.lru import Lru
from modelgate_core.errors import RateLimited

AUTH_FAILURES_REFUSED = Counter(
    "modelgate_auth_failures_refused_total",
    "Requests refused with 429 because their address failed authentication too often.",
)


@dataclass(slots=True)
class _Window:
    started: float
    failures: int


class FailedAuthLimiter:
    """In-process count of failed authentications per client address."""

    def __init__(
        self,
        limit: int,
        window_seconds: float,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 0 or window_seconds <= 0:
            raise ValueError("limit must be >= 0 and window_seconds > 0")
        self.limit = limit
        self.window_seconds = window_seconds
        self._clock = clock
        self._windows: Lru[str, _Window] = Lru(max_addresses)

    def check(self, address: str) -> None:
        """Raise `RateLimited` (429, `Retry-After`) if `address` has used up its failures."""
        if self.limit == 0:
            return
        window = self._current(address)
        if window is None or window.failures < self.limit:
            return
        AUTH_FAILURES_REFUSED.inc()
        retry = max(1, math.ceil(window.started + self.window_seconds - self._clock()))
        raise RateLimited(
            f"Too many failed authentication attempts from this address; retry in {retry} s",
            headers={"retry-after": str(retry)},
        )

    def record_failure(self, address: str) -> None:
        """Count one failed authentication from `address`."""
        if self.limit == 0:
            return
        window = self._current(address)
        if window is None:
            window = _Window(self._clock(), 0)
            self._windows.put(address, window)
        window.failures += 1

    def _current(self, address: str) -> _Window | None:
        """The address's window if it is still running (an ended one is dropped)."""
        window = self._windows.get(address)
        if window is not None and self._clock() - window.started >= self.window_seconds:
            self._windows.pop(address)
            return None
        return window
