"""`DecodeBudget`: the pixels the decodes running at once in one worker may hold, in arrival order."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from vision_service.decode import DecodeBudget


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.005)


def in_thread(target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_small_decodes_run_together() -> None:
    """Three that fit side by side are inside at once: the barrier breaks if they are serialised."""
    budget = DecodeBudget(100)
    together = threading.Barrier(3, timeout=30)
    broken: list[BaseException] = []

    def decode() -> None:
        with budget.hold(30):
            try:
                together.wait()
            except threading.BrokenBarrierError as exc:
                broken.append(exc)

    threads = [in_thread(decode) for _ in range(3)]
    for thread in threads:
        thread.join(60)
    assert not broken
    assert budget.held == 0


def test_one_that_does_not_fit_waits_and_so_do_later_ones() -> None:
    """First come, first served: a small decode that would fit does not overtake a large one waiting."""
    budget = DecodeBudget(100)
    entered: list[str] = []
    small_inside = threading.Event()
    side_by_side: list[bool] = []

    def large() -> None:
        with budget.hold(60):
            entered.append("large")
            # The small one, next in line, fits beside it: both are inside at once.
            side_by_side.append(small_inside.wait(30))

    def small() -> None:
        with budget.hold(10):
            entered.append("small")
            small_inside.set()

    with budget.hold(60):
        waiting_large = in_thread(large)
        wait_for(lambda: budget.waiting == 1, "the large one waits")
        waiting_small = in_thread(small)
        wait_for(lambda: budget.waiting == 2, "the small one waits behind it")
        assert entered == []
    waiting_large.join(30)
    waiting_small.join(30)
    assert entered == ["large", "small"] and side_by_side == [True]
    assert budget.held == 0 and budget.waiting == 0


def test_an_image_larger_than_the_budget_takes_all_of_it() -> None:
    budget = DecodeBudget(100)
    with budget.hold(10_000):
        assert budget.held == 100
    assert budget.held == 0


def test_the_budget_is_given_back_when_a_decode_fails() -> None:
    budget = DecodeBudget(100)
    with pytest.raises(OSError), budget.hold(100):
        raise OSError("truncated")
    with budget.hold(100):
        assert budget.held == 100


def test_a_budget_needs_a_pixel() -> None:
    with pytest.raises(ValueError, match="at least 1 pixel"):
        DecodeBudget(0)
