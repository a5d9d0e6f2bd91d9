"""`modelgate_circuit_breaker_state` has a series per upstream from the breaker's creation (the dashboard
and the breaker alert read it), and follows the breaker's state."""

from __future__ import annotations

from prometheus_client import REGISTRY

from gateway.resilience import CircuitBreaker


def state_of(upstream: str) -> float | None:
    return REGISTRY.get_sample_value("modelgate_circuit_breaker_state", {"upstream": upstream})


def test_a_new_breaker_reports_closed_then_open() -> None:
    assert state_of("breaker-metric-test") is None
    breaker = CircuitBreaker("breaker-metric-test", failure_threshold=2, reset_seconds=60)
    assert state_of("breaker-metric-test") == 0.0
    for _ in range(2):
        admission = breaker.admit()
        assert admission is not None
        admission.failure()
    assert breaker.state == "open"
    assert state_of("breaker-metric-test") == 2.0
