"""Backpressure and deadlines in a served model version: a bounded wait, refused at once past the bound
(503 with Retry-After), and work whose caller has given up dropped before preprocessing, before the
model call, and in the batcher before its batch runs.

The model is the tests' doubler (a real runtime) held in `predict` by a gate, so "the slot is busy" is
a state the test controls, not a delay it hopes is long enough.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from modelgate_core import context
from modelgate_core.batching import Batcher, BatchPolicy
from modelgate_core.errors import ServiceUnavailable
from modelgate_core.repository.control import Control
from modelgate_core.repository.repository import ModelRepository, ServingOptions
from modelgate_core.repository.runtime import Tensors
from modelgate_core.repository.served import DeadlineExceeded, ServedVersion

# Every way a request reaches the model: preprocess in a thread or inline (light), alone or batched.
PATHS = [
    pytest.param(False, None, id="threads-alone"),
    pytest.param(True, None, id="light-alone"),
    pytest.param(False, BatchPolicy(max_batch_size=32, max_wait_ms=0), id="threads-batched"),
    pytest.param(True, BatchPolicy(max_batch_size=32, max_wait_ms=0), id="light-batched"),
]


@pytest.fixture
def runtimes(doubler_runtime: Any) -> dict[bool, type]:
    """The doubler, recording the values each step saw; `light_steps` or not."""

    class Counting(doubler_runtime):  # type: ignore[misc,valid-type]
        def __init__(self, ctx: Any) -> None:
            super().__init__(ctx)
            self.preprocessed: list[list[float]] = []
            self.predicted: list[list[float]] = []

        def preprocess(self, inputs: Tensors, parameters: Any) -> Tensors:
            self.preprocessed.append(inputs["x"].tolist())
            return super().preprocess(inputs, parameters)  # type: ignore[no-any-return]

        def predict(self, batch: Tensors) -> Tensors:
            self.predicted.append(batch["x"].tolist())
            return super().predict(batch)  # type: ignore[no-any-return]

    class LightCounting(Counting):
        light_steps = True

    return {False: Counting, True: LightCounting}


async def served_version(
    root: Path, control: Path, write_version: Any, runtime: type, name: str, **serving: Any
) -> ServedVersion:
    write_version(root, name, "1")
    repository = ModelRepository(
        root, "tabular", {"sklearn": runtime}, Control(control), options=ServingOptions(**serving)
    )
    await repository.start()
    return repository.get(name)


def x(value: float) -> dict[str, np.ndarray[Any, Any]]:
    return {"x": np.asarray([value], dtype=np.float64)}


async def infer_by(served: ServedVersion, deadline: float | None, value: float) -> Tensors:
    """One request whose caller gives up at `deadline` (as RequestContextMiddleware binds it)."""
    token = context.bind(context.RequestContext("test", deadline=deadline))
    try:
        return await served.infer(x(value))
    finally:
        context.unbind(token)


def dropped(model: str, reason: str) -> float:
    labels = {"model": model, "reason": reason}
    return REGISTRY.get_sample_value("modelgate_dropped_requests_total", labels) or 0.0


@pytest.fixture
def opened() -> Iterator[list[Any]]:
    """Gates to open at the end whatever happens, so no model thread is left waiting."""
    gates: list[Any] = []
    yield gates
    for gate in gates:
        gate.set()


async def hold_the_model(served: ServedVersion, opened: list[Any]) -> asyncio.Task[Tensors]:
    """A first request, held inside `predict` (the model slot is taken) until the gate opens."""
    runtime: Any = served.runtime
    runtime.gate = threading.Event()
    opened.append(runtime.gate)
    first = asyncio.create_task(served.infer(x(1.0)))
    assert await asyncio.to_thread(runtime.entered.wait, 10), "the model never started"
    return first


@pytest.mark.parametrize(("light", "batching"), PATHS)
async def test_requests_over_the_bound_are_refused_at_once_with_retry_after(
    repo_root: Path,
    control_dir: Path,
    write_version: Any,
    runtimes: dict[bool, type],
    opened: list[Any],
    light: bool,
    batching: BatchPolicy | None,
) -> None:
    bound = 5
    served = await served_version(
        repo_root, control_dir, write_version, runtimes[light], "bounded", batching=batching, max_queued=bound
    )
    runtime: Any = served.runtime
    refused_before = dropped("bounded", "queue_full")
    first = await hold_the_model(served, opened)

    # The bound's worth wait for the busy model; the three after them are over it.
    waiting = [asyncio.create_task(served.infer(x(10.0 + i))) for i in range(bound)]
    over = [asyncio.create_task(served.infer(x(100.0 + i))) for i in range(3)]
    done, _ = await asyncio.wait(over, timeout=10)
    assert done == set(over), "requests over the bound waited for the model instead of being refused"
    # Answered while the model was still busy: none of them waited for the slot.
    assert not first.done() and not any(task.done() for task in waiting)
    for task in over:
        error = task.exception()
        assert isinstance(error, ServiceUnavailable)
        assert (error.status_code, error.headers) == (503, {"retry-after": "1"})
        assert "busy" in error.message
    assert dropped("bounded", "queue_full") == refused_before + 3
    assert served.waiting == bound

    runtime.gate.set()
    assert (await first)["y"].tolist() == [2.0]
    assert [(await task)["y"].tolist() for task in waiting] == [[20.0 + 2 * i] for i in range(bound)]
    # The refused requests never reached the model; the wait is empty again and takes requests.
    assert sorted(v for call in runtime.predicted for v in call) == [1.0] + [10.0 + i for i in range(bound)]
    assert served.waiting == 0
    assert (await served.infer(x(7.0)))["y"].tolist() == [14.0]


@pytest.mark.parametrize(("light", "batching"), PATHS)
async def test_a_request_whose_deadline_passed_on_arrival_is_never_preprocessed_or_run(
    repo_root: Path,
    control_dir: Path,
    write_version: Any,
    runtimes: dict[bool, type],
    light: bool,
    batching: BatchPolicy | None,
) -> None:
    served = await served_version(
        repo_root, control_dir, write_version, runtimes[light], "late", batching=batching
    )
    runtime: Any = served.runtime
    before = dropped("late", "deadline")
    with pytest.raises(DeadlineExceeded) as caught:
        await infer_by(served, time.monotonic() - 0.001, 3.0)
    assert (caught.value.status_code, caught.value.code) == (504, "deadline_exceeded")
    assert runtime.preprocessed == [] and runtime.predicted == []
    assert dropped("late", "deadline") == before + 1
    assert served.waiting == 0
    # A caller with time left is served as usual.
    assert (await infer_by(served, time.monotonic() + 60, 3.0))["y"].tolist() == [6.0]


@pytest.mark.parametrize(("light", "batching"), PATHS)
async def test_a_request_whose_deadline_passes_while_it_waits_never_reaches_the_model(
    repo_root: Path,
    control_dir: Path,
    write_version: Any,
    runtimes: dict[bool, type],
    opened: list[Any],
    light: bool,
    batching: BatchPolicy | None,
) -> None:
    served = await served_version(
        repo_root, control_dir, write_version, runtimes[light], "expiring", batching=batching
    )
    runtime: Any = served.runtime
    before = dropped("expiring", "deadline")
    first = await hold_the_model(served, opened)

    deadline = time.monotonic() + 0.25
    doomed = asyncio.create_task(infer_by(served, deadline, 2.0))
    patient = asyncio.create_task(infer_by(served, None, 3.0))
    await asyncio.sleep(0)  # both have started: admitted, waiting behind the busy model
    assert served.waiting == 2 and time.monotonic() < deadline, "admitted after its deadline already"
    # The caller gives up while the model is still busy.
    await asyncio.sleep(deadline - time.monotonic() + 0.02)
    assert time.monotonic() > deadline and not doomed.done()
    runtime.gate.set()

    assert (await first)["y"].tolist() == [2.0]
    with pytest.raises(DeadlineExceeded):
        await doomed
    assert (await patient)["y"].tolist() == [6.0]
    # The model ran the first and the patient request only (each alone: the doomed one was dropped
    # before its call or, batched, before its batch formed, leaving its place to the patient one).
    assert runtime.predicted == [[1.0], [3.0]]
    # Preprocessing had run for it, except where it runs with the model call (light, unbatched).
    expect_preprocessed = [[1.0], [3.0]] if light and batching is None else [[1.0], [2.0], [3.0]]
    assert sorted(runtime.preprocessed) == expect_preprocessed
    assert dropped("expiring", "deadline") == before + 1
    assert served.waiting == 0


def test_the_bound_must_let_one_request_wait(runtimes: dict[bool, type]) -> None:
    with pytest.raises(ValueError, match="max_queued"):
        ServedVersion(object.__new__(runtimes[False]), max_queued=0)


# --- The batcher on its own ------------------------------------------------------------------------


class Gated:
    """A model call that doubles its inputs, held until released; remembers each batch."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.started = asyncio.Event()

    async def __call__(self, items: list[int]) -> list[int | BaseException]:
        self.batches.append(list(items))
        self.started.set()
        await self.gate.wait()
        return [item * 2 for item in items]


class CallerGone(Exception):
    pass


async def test_batcher_drops_a_queued_call_whose_deadline_passed_before_its_batch() -> None:
    run = Gated()
    batcher: Batcher[int, int] = Batcher(
        run, BatchPolicy(max_batch_size=8, max_wait_ms=0), expired=CallerGone
    )
    first = asyncio.create_task(batcher.submit([1]))
    await run.started.wait()
    # Queued behind the running batch: one whose caller has already gone, two whose callers wait.
    gone = asyncio.create_task(batcher.submit([2, 3], deadline=time.monotonic() - 0.001))
    kept = asyncio.create_task(batcher.submit([4], deadline=time.monotonic() + 60))
    undated = asyncio.create_task(batcher.submit([5]))
    await asyncio.sleep(0)
    assert batcher.queued_inputs() == 4
    run.gate.set()
    assert await first == [2]
    with pytest.raises(CallerGone):
        await gone
    assert (await kept, await undated) == ([8], [10])
    assert run.batches == [[1], [4, 5]]  # the expired call's inputs never reached the model


async def test_batcher_default_expiry_is_a_timeout_error() -> None:
    run = Gated()
    run.gate.set()
    batcher: Batcher[int, int] = Batcher(run, BatchPolicy(max_batch_size=8, max_wait_ms=0))
    with pytest.raises(TimeoutError, match="deadline"):
        await batcher.submit([1], deadline=time.monotonic() - 0.001)
    assert run.batches == []
