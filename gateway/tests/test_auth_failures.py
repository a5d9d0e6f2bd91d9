"""The failed-authentication limiter: N failures per window per address, then 429 with Retry-After."""

from __future__ import annotations

import pytest

from gateway.auth_failures import FailedAuthLimiter
from modelgate_core.errors import RateLimited


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def refused(limiter: FailedAuthLimiter, address: str) -> RateLimited | None:
    try:
        limiter.check(address)
    except RateLimited as exc:
        return exc
    return None


def test_the_nth_failure_closes_the_address_until_the_window_ends() -> None:
    clock = Clock()
    limiter = FailedAuthLimiter(limit=3, window_seconds=60, clock=clock)
    for _ in range(2):
        limiter.record_failure("203.0.113.7")
        assert refused(limiter, "203.0.113.7") is None
    clock.now += 10
    limiter.record_failure("203.0.113.7")
    error = refused(limiter, "203.0.113.7")
    assert error is not None
    assert (error.status_code, error.code) == (429, "rate_limited")
    # The window began at the first failure: 50 s of it are left.
    assert error.headers == {"retry-after": "50"}
    assert "failed authentication" in error.message
    assert refused(limiter, "198.51.100.1") is None  # per address

    clock.now += 49.5
    error = refused(limiter, "203.0.113.7")
    assert error is not None and error.headers == {"retry-after": "1"}  # never 0
    clock.now += 0.5
    assert refused(limiter, "203.0.113.7") is None
    limiter.record_failure("203.0.113.7")  # a new window: one failure in it, not four
    assert refused(limiter, "203.0.113.7") is None


def test_limit_zero_turns_it_off() -> None:
    limiter = FailedAuthLimiter(limit=0, window_seconds=60)
    for _ in range(100):
        limiter.record_failure("203.0.113.7")
    assert refused(limiter, "203.0.113.7") is None
    assert len(limiter._windows) == 0


def test_memory_is_bounded_and_a_refused_address_that_keeps_trying_stays_refused() -> None:
    clock = Clock()
    limiter = FailedAuthLimiter(limit=1, window_seconds=60, max_addresses=2, clock=clock)
    limiter.record_failure("scanner")
    for n in range(50):  # addresses that fail once each, interleaved with the scanner's attempts
        assert refused(limiter, "scanner") is not None
        limiter.record_failure(f"10.0.0.{n}")
        assert len(limiter._windows) <= 2
    assert refused(limiter, "scanner") is not None
    assert refused(limiter, "10.0.0.0") is None  # forgotten: the least recently seen went first


@pytest.mark.parametrize(("limit", "window"), [(-1, 60.0), (3, 0.0)])
def test_bad_settings_are_refused(limit: int, window: float) -> None:
    with pytest.raises(ValueError):
        FailedAuthLimiter(limit, window)
