"""Helpers for testing a ModelGate app in-process (used by every component's tests)."""

from __future__ import annotations

import time
from typing import Protocol


class _Response(Protocol):
    status_code: int
    text: str

    def json(self) -> object: ...


class _Client(Protocol):
    def get(self, url: str) -> _Response: ...


def wait_until_ready(client: _Client, timeout: float = 120.0, interval: float = 0.05) -> None:
    """Poll `/health/ready` until 200; fail at once if a model failed to load, or after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get("/health/ready")
        if response.status_code == 200:
            return
        if "failed" in response.text:
            raise AssertionError(f"a model failed to load: {response.text}")
        if time.monotonic() >= deadline:
            raise AssertionError(f"not ready after {timeout} s: {response.text}")
        time.sleep(interval)
