"""Adaptive batching: concurrent calls merge, bad inputs fail alone, limits hold, cancellation is safe."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from modelgate_core.batching import Batcher, BatchPolicy
from modelgate_core.errors import BadRequest


class Recorder:
    """A fake model call: doubles its inputs and remembers each batch; can be held until released."""

    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.delay = delay
        self.gate: asyncio.Event | None = None

    async def __call__(self, items: list[int]) -> list[int | BaseException]:
        self.batches.append(list(items))
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(self.delay)
        return [x * 2 for x in items]


def batcher(run: Recorder, max_batch_size: int = 32, max_wait_ms: float = 20.0) -> Batcher[int, int]:
    return Batcher(run, BatchPolicy(max_batch_size=max_batch_size, max_wait_ms=max_wait_ms))


async def test_concurrent_calls_become_one_model_call() -> None:
    run = Recorder()
    b = batcher(run)
    results = await asyncio.gather(*(b.submit([i]) for i in range(10)))
    assert results == [[i * 2] for i in range(10)]
    assert len(run.batches) == 1 and sorted(run.batches[0]) == list(range(10))


async def test_each_caller_gets_its_own_results_in_order() -> None:
    run = Recorder()
    b = batcher(run)
    a, c, d = await asyncio.gather(b.submit([1, 2, 3]), b.submit([10]), b.submit([7, 5]))
    assert (a, c, d) == ([2, 4, 6], [20], [14, 10])
    assert run.batches == [[1, 2, 3, 10, 7, 5]]


async def test_max_batch_size_is_respected_and_calls_are_never_split() -> None:
    run = Recorder(delay=0.01)
    b = batcher(run, max_batch_size=4)
    results = await asyncio.gather(*(b.submit([i]) for i in range(10)), b.submit(list(range(100, 106))))
    assert results[:10] == [[i * 2] for i in range(10)]
    assert results[10] == [x * 2 for x in range(100, 106)]  # one call larger than the limit: alone, whole
    sizes = [len(batch) for batch in run.batches]
    assert sorted(sizes) == [2, 4, 4, 6]
    assert list(range(100, 106)) in run.batches


async def test_a_lone_call_waits_at_most_max_wait() -> None:
    run = Recorder()
    b = batcher(run, max_wait_ms=60)
    started = time.perf_counter()
    assert await b.submit([1]) == [2]
    waited = time.perf_counter() - started
    assert 0.055 <= waited < 0.5
    # No wait at all when the limit is 0, and a full batch goes without waiting for the deadline.
    quick = batcher(run, max_wait_ms=0)
    started = time.perf_counter()
    await quick.submit([1])
    assert time.perf_counter() - started < 0.05
    full = batcher(run, max_batch_size=2, max_wait_ms=10_000)
    started = time.perf_counter()
    assert await asyncio.gather(full.submit([1]), full.submit([2])) == [[2], [4]]
    assert time.perf_counter() - started < 1


async def test_calls_after_the_deadline_form_the_next_batch() -> None:
    run = Recorder()
    b = batcher(run, max_wait_ms=20)
    first = asyncio.ensure_future(b.submit([1]))
    await asyncio.sleep(0.1)  # the first batch has gone
    second = await b.submit([2])
    assert (await first, second) == ([2], [4])
    assert run.batches == [[1], [2]]


async def test_calls_queue_while_the_model_is_busy() -> None:
    """Adaptive: what arrives during a model call becomes the next batch, without further waiting."""
    run = Recorder()
    run.gate = asyncio.Event()
    b = batcher(run, max_wait_ms=0)
    first = asyncio.ensure_future(b.submit([0]))
    await asyncio.sleep(0.01)
    rest = [asyncio.ensure_future(b.submit([i])) for i in range(1, 8)]
    await asyncio.sleep(0.01)
    assert b.queued_inputs() == 7
    run.gate.set()
    assert await first == [0]
    assert [await r for r in rest] == [[i * 2] for i in range(1, 8)]
    assert run.batches == [[0], list(range(1, 8))]


async def test_cancelled_waiting_caller_does_not_break_the_batcher() -> None:
    run = Recorder()
    b = batcher(run, max_wait_ms=100)
    doomed = asyncio.ensure_future(b.submit([1]))
    kept = asyncio.ensure_future(b.submit([2]))
    await asyncio.sleep(0.01)
    doomed.cancel()
    assert await kept == [4]
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert run.batches == [[2]]  # the cancelled input never reached the model
    assert await b.submit([3]) == [6]


async def test_cancelled_caller_while_its_batch_runs() -> None:
    run = Recorder()
    run.gate = asyncio.Event()
    b = batcher(run, max_wait_ms=0)
    doomed = asyncio.ensure_future(b.submit([1]))
    await asyncio.sleep(0.01)
    kept = asyncio.ensure_future(b.submit([2]))  # queued behind the running batch
    await asyncio.sleep(0.01)
    doomed.cancel()
    run.gate.set()
    assert await kept == [4]
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert await b.submit([3]) == [6]
    assert run.batches == [[1], [2], [3]]


async def test_a_failing_model_call_fails_its_batch_only() -> None:
    calls = 0

    async def flaky(items: list[int]) -> list[int | BaseException]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return list(items)

    b: Batcher[int, int] = Batcher(flaky, BatchPolicy(max_batch_size=8, max_wait_ms=10))
    outcomes = await asyncio.gather(b.submit([1]), b.submit([2]), return_exceptions=True)
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    assert await b.submit([3]) == [3]


def test_works_across_event_loops() -> None:
    """A new loop (a new test client, a restarted server) gets a fresh queue and dispatcher."""
    run = Recorder()
    b = batcher(run, max_wait_ms=1)
    assert asyncio.run(b.submit([1])) == [2]
    assert asyncio.run(b.submit([2])) == [4]


def test_policy_is_validated() -> None:
    with pytest.raises(ValueError, match="batch policy"):
        BatchPolicy(max_batch_size=0)


# --- Through a served model version, with a real runtime -----------------------------------------


async def loaded(
    root: Path, control: Path, write_version: Any, make_repository: Any, policy: BatchPolicy | None
) -> Any:
    write_version(root, "double", "1", settings={"runtime": "sklearn", "parameters": {"delay": 0.02}})
    repository = make_repository(root, control, batching=policy)
    await repository.start()
    served = repository.get("double")
    return served, served.runtime


def batch_size_samples() -> tuple[float, float]:
    """(count, sum) of the doubler's MODEL_BATCH_SIZE histogram so far."""
    labels = {"model": "double"}
    count = REGISTRY.get_sample_value("modelgate_model_batch_size_count", labels) or 0.0
    return count, REGISTRY.get_sample_value("modelgate_model_batch_size_sum", labels) or 0.0


async def test_served_model_merges_concurrent_infer_calls(
    repo_root: Path, control_dir: Path, write_version: Any, make_repository: Any, tensor: Any
) -> None:
    policy = BatchPolicy(max_batch_size=32, max_wait_ms=5)
    served, runtime = await loaded(repo_root, control_dir, write_version, make_repository, policy)
    count, total = batch_size_samples()
    results = await asyncio.gather(*(served.infer(tensor(float(i), i + 0.5)) for i in range(20)))
    assert [r["y"].tolist() for r in results] == [[2.0 * i, 2.0 * i + 1.0] for i in range(20)]
    assert sum(runtime.calls) == 40
    assert len(runtime.calls) < 20 / 2  # most calls were merged
    assert max(runtime.calls) <= 32
    # The histogram sees model calls and their sizes, not requests.
    assert batch_size_samples() == (count + len(runtime.calls), total + 40)


async def test_unbatched_model_calls_once_per_infer(
    repo_root: Path, control_dir: Path, write_version: Any, make_repository: Any, tensor: Any
) -> None:
    served, runtime = await loaded(repo_root, control_dir, write_version, make_repository, None)
    await asyncio.gather(*(served.infer(tensor(float(i))) for i in range(5)))
    assert runtime.calls == [1, 1, 1, 1, 1]


async def test_a_bad_input_fails_only_its_caller(
    repo_root: Path, control_dir: Path, write_version: Any, make_repository: Any, tensor: Any
) -> None:
    policy = BatchPolicy(max_batch_size=32, max_wait_ms=20)
    served, runtime = await loaded(repo_root, control_dir, write_version, make_repository, policy)
    outcomes = await asyncio.gather(
        served.infer(tensor(1.0)),
        served.infer(tensor(2.0, -1.0)),  # one bad input: this whole call fails, as it would unbatched
        served.infer(tensor(3.0, 4.0)),
        served.infer(tensor(-5.0)),
        return_exceptions=True,
    )
    assert outcomes[0]["y"].tolist() == [2.0] and outcomes[2]["y"].tolist() == [6.0, 8.0]
    assert isinstance(outcomes[1], BadRequest) and "-1.0" in str(outcomes[1])
    assert isinstance(outcomes[3], BadRequest) and "-5.0" in str(outcomes[3])
    assert runtime.calls == [3]  # the good requests' rows (1, 3, 4) in one predict call
