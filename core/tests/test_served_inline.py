"""Light models faster than a thread round trip run on the event loop; slow ones, the first call, and
every call when `inline_below_seconds` is 0, in a worker thread."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelgate_core.repository.control import Control
from modelgate_core.repository.repository import ModelRepository, ServingOptions
from modelgate_core.repository.runtime import Tensors
from modelgate_core.repository.served import ServedVersion


@pytest.fixture
def light(doubler_runtime: Any) -> type:
    class Light(doubler_runtime):  # type: ignore[misc,valid-type]
        light_steps = True
        call_seconds = 0.0
        sleep_seconds = 0.0

        def __init__(self, ctx: Any) -> None:
            super().__init__(ctx)
            self.callers: list[int] = []

        def predict(self, batch: Tensors) -> Tensors:
            self.callers.append(threading.get_ident())
            if self.call_seconds:  # busy, as a heavy model is (its CPU time is what counts)
                until = time.thread_time() + self.call_seconds
                while time.thread_time() < until:
                    pass
            if self.sleep_seconds:  # waiting on something, as a model doing I/O does
                time.sleep(self.sleep_seconds)
            return super().predict(batch)  # type: ignore[no-any-return]

    return Light


# Generous, so that a loaded machine's pauses never make the fast doubler look slow; the slow one sleeps
# longer than this.
INLINE_BELOW = 0.05
SLOW = 0.06


async def served(
    root: Path, control: Path, write_version: Any, runtime: type, inline_below_seconds: float = INLINE_BELOW
) -> ServedVersion:
    write_version(root, "m", "1")
    repository = ModelRepository(
        root,
        "tabular",
        {"sklearn": runtime},
        Control(control),
        options=ServingOptions(inline_below_seconds=inline_below_seconds),
    )
    await repository.start()
    return repository.get("m")


async def threads_of_calls(version: ServedVersion, calls: int) -> list[bool]:
    """For each call in turn, whether its predict ran on the loop's thread."""
    loop_thread = threading.get_ident()
    for value in range(calls):
        outputs = await version.infer({"x": np.asarray([float(value)])})
        assert outputs["y"].tolist() == [2.0 * value]
    runtime: Any = version.runtime
    return [ident == loop_thread for ident in runtime.callers]


async def test_a_fast_light_model_runs_on_the_loop_after_its_first_call(
    repo_root: Path, control_dir: Path, write_version: Any, light: type
) -> None:
    version = await served(repo_root, control_dir, write_version, light)
    assert await threads_of_calls(version, 4) == [False, True, True, True]


async def test_a_slow_light_model_stays_in_threads(
    repo_root: Path, control_dir: Path, write_version: Any, light: type
) -> None:
    light.call_seconds = SLOW
    version = await served(repo_root, control_dir, write_version, light)
    assert await threads_of_calls(version, 3) == [False, False, False]


async def test_one_slow_call_moves_the_model_off_the_loop(
    repo_root: Path, control_dir: Path, write_version: Any, light: type
) -> None:
    version = await served(repo_root, control_dir, write_version, light)
    runtime: Any = version.runtime
    assert await threads_of_calls(version, 2) == [False, True]
    runtime.call_seconds = SLOW
    await version.infer({"x": np.asarray([1.0])})  # on the loop, and slow
    runtime.call_seconds = 0.0
    await version.infer({"x": np.asarray([1.0])})
    loop_thread = threading.get_ident()
    assert [ident == loop_thread for ident in runtime.callers[2:]] == [True, False]


async def test_zero_never_runs_a_model_on_the_loop(
    repo_root: Path, control_dir: Path, write_version: Any, light: type
) -> None:
    version = await served(repo_root, control_dir, write_version, light, inline_below_seconds=0)
    assert await threads_of_calls(version, 3) == [False, False, False]


async def test_a_model_that_waits_on_something_stays_in_threads_though_its_cpu_is_small(
    repo_root: Path, control_dir: Path, write_version: Any, light: type
) -> None:
    light.sleep_seconds = 0.12  # past 20 x the bound below
    version = await served(repo_root, control_dir, write_version, light, inline_below_seconds=0.005)
    assert await threads_of_calls(version, 3) == [False, False, False]
