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


class Admission:
    """One call a `CircuitBreaker` let through, tied to the breaker state (generation) it was let
    through in. Report its outcome with `success()` or `failure()`; `release()` (also what leaving a
    `with` block does) ends it with no outcome. Only the first of the three counts, and none counts once
    the breaker has changed state since: an answer to a request sent before the breaker opened says
    nothing about the service now.

    Always end an admission, on every path (`finally`, or `with`): a half-open breaker lets one probe
    through at a time, and a probe that is never ended would keep every other call refused.
    """

    __slots__ = ("_breaker", "_done", "generation", "probe")

    def __init__(self, breaker: CircuitBreaker, generation: int, probe: bool) -> None:
        self._breaker = breaker
        self._done = False
        self.generation = generation
        self.probe = probe

    def success(self) -> None:
        if self._end():
            self._breaker._on_success(self)

    def failure(self) -> None:
        if self._end():
            self._breaker._on_failure(self)

    def release(self) -> None:
        """End with no outcome (cancelled, or failed in a way that says nothing about the service)."""
        if self._end():
            self._breaker._on_release(self)

    def __enter__(self) -> Admission:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def _end(self) -> bool:
        if self._done:
            return False
        self._done = True
        return True


@dataclass
class CircuitBreaker:
    """Opens after `failure_threshold` consecutive failures; while open every call is refused at once.
    After `reset_seconds` one probe is let through (half-open): success closes it, failure re-opens it,
    and a probe ended with no outcome lets the next call probe instead.

    `admit()` hands out an `Admission` per call. Every change of state starts a new generation, and
    outcomes of calls admitted in an earlier one are ignored.
    """

    name: str
    failure_threshold: int = 5
    reset_seconds: float = 5.0
    state: BreakerState = "closed"
    failures: int = 0
    opened_at: float = 0.0
    generation: int = 0
    _probe_in_flight: bool = False

    def __post_init__(self) -> None:
        # A series from the start, not from the first change: a dashboard shows "closed", not no data.
        BREAKER_STATE.labels(self.name).set(_STATE_VALUE[self.state])

    def admit(self) -> Admission | None:
        """An admission for a call that may go out now, or None: the circuit is open."""
        if self.state == "closed":
            return Admission(self, self.generation, probe=False)
        if self.state == "open" and time.monotonic() - self.opened_at >= self.reset_seconds:
            self._set("half_open")
        if self.state == "half_open" and not self._probe_in_flight:
            self._probe_in_flight = True
            return Admission(self, self.generation, probe=True)
        return None

    def _on_success(self, admission: Admission) -> None:
        if admission.generation != self.generation:
            return
        self.failures = 0
        if admission.probe:
            self._probe_in_flight = False
        if self.state != "closed":
            self._set("closed")

    def _on_failure(self, admission: Admission) -> None:
        if admission.generation != self.generation:
            return
        if admission.probe:
            self._probe_in_flight = False
        self.failures += 1
        if self.state == "half_open" or self.failures >= self.failure_threshold:
            self.opened_at = time.monotonic()
            self._set("open")

    def _on_release(self, admission: Admission) -> None:
        if admission.generation == self.generation and admission.probe:
            self._probe_in_flight = False

    def _set(self, state: BreakerState) -> None:
        self.state = state
        self.generation += 1
        self._probe_in_flight = False  # a probe belongs to the generation it was admitted in
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

    is_literal: bool = field(init=False)

    def __post_init__(self) -> None:
        # Decided once: `pick` runs on every request.
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            self.is_literal = self.host == "localhost"
        else:
            self.is_literal = True

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
