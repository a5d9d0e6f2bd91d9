"""What keeps one sick service from hurting the rest: a circuit breaker per upstream, a retry budget,
and client-side spreading over every replica a service name resolves to.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import time
from dataclasses import dataclass, field
from typing import Literal

from prometheus_client import Gauge

BreakerState = Literal["closed", "open", "half_open"]
_STATE_VALUE = {"closed": 0, "half_open": 1, "open": 2}
BREAKER_STATE = Gauge(
    "modelgate_circuit_breaker_state",
    "Circuit breaker per upstream: 0 closed, 1 half-open, 2 open.",
    ["upstream"],
    multiprocess_mode="livemax",
)


@dataclass
class CircuitBreaker:
    """Opens after `failure_threshold` consecutive failures; while open every call is refused at once.
    After `reset_seconds` one probe is let through (half-open): success closes it, failure re-opens it.
    """

    name: str
    failure_threshold: int = 5
    reset_seconds: float = 5.0
    state: BreakerState = "closed"
    failures: int = 0
    opened_at: float = 0.0
    _probe_in_flight: bool = False

    def allow(self) -> bool:
        """Whether a call may go out now."""
        if self.state == "closed":
            return True
        if self.state == "open" and time.monotonic() - self.opened_at >= self.reset_seconds:
            self._set("half_open")
        if self.state == "half_open" and not self._probe_in_flight:
            self._probe_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        self.failures = 0
        self._probe_in_flight = False
        if self.state != "closed":
            self._set("closed")

    def record_failure(self) -> None:
        self.failures += 1
        self._probe_in_flight = False
        if self.state == "half_open" or self.failures >= self.failure_threshold:
            self.opened_at = time.monotonic()
            self._set("open")

    def _set(self, state: BreakerState) -> None:
        self.state = state
        BREAKER_STATE.labels(self.name).set(_STATE_VALUE[state])


@dataclass
class RetryBudget:
    """Retries may add at most `ratio` of the traffic (plus a small floor), so that retrying never
    multiplies the load on a service that is already failing."""

    ratio: float = 0.2
    floor: float = 10.0
    tokens: float = 10.0

    def deposit(self) -> None:
        self.tokens = min(self.floor + 100 * self.ratio, self.tokens + self.ratio)

    def withdraw(self) -> bool:
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def backoff(attempt: int, base: float = 0.05, cap: float = 0.5) -> float:
    """Full-jitter exponential backoff (seconds) before retry number `attempt` (1-based)."""
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))


@dataclass
class ReplicaResolver:
    """Resolves a service name to all its addresses (Docker's DNS returns one per replica, e.g. with
    `docker compose up --scale nlp-service=2`) and hands them out round-robin, refreshing every
    `ttl_seconds`. A pooled client keeps connections per address, so without this every request would
    ride the first replica's keep-alive connections."""

    host: str
    port: int
    ttl_seconds: float = 5.0
    addresses: list[str] = field(default_factory=list)
    _resolved_at: float = -1e9
    _next: int = 0

    @property
    def is_literal(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return self.host == "localhost"
        return True

    async def pick(self) -> str:
        """The next address to use (the host itself for IP literals or when resolution fails)."""
        if self.is_literal:
            return self.host
        if time.monotonic() - self._resolved_at > self.ttl_seconds:
            await self._refresh()
        if not self.addresses:
            return self.host
        self._next = (self._next + 1) % len(self.addresses)
        return self.addresses[self._next]

    def forget(self, address: str) -> None:
        """Stop using an address that refused or timed out a connection, and re-resolve on the next
        pick: a stopped container's address never answers, so retrying it only burns the timeout."""
        if address in self.addresses:
            self.addresses.remove(address)
        self._resolved_at = -1e9

    async def _refresh(self) -> None:
        self._resolved_at = time.monotonic()
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                self.host, self.port, family=socket.AF_INET, type=socket.SOCK_STREAM
            )
        except OSError:
            self.addresses = []  # fall back to the name; the connect error then maps to a 503
            return
        self.addresses = sorted({str(info[4][0]) for info in infos})
