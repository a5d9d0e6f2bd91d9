"""Adaptive batching: concurrent inference calls in one worker become one model call.

A `Batcher` lives in a worker's event loop. Each caller submits its inputs and waits; a dispatcher task
takes the queued calls, whole and in arrival order, up to `max_batch_size` inputs or until the oldest
has waited `max_wait_ms`, and runs them as one call of the model. While the model is busy the queue
keeps filling, so the batch size adapts to the load: one input at a time when traffic is light (after
at most `max_wait_ms`), full batches under pressure, with no waiting then (the wait counts from the
oldest caller's arrival, and it has usually waited longer than that for the model already).

The model call returns one outcome per input, a result or an exception; each caller gets its own
slice back, or the first exception in it. A bad input therefore fails only the call that sent it.

A caller may give a deadline (on `time.monotonic()`'s clock): a call still queued when it passes is
answered with the `expired()` exception instead of joining a batch, so the model never spends time on an
answer nobody waits for.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar, cast

InputT = TypeVar("InputT")
OutputT = TypeVar("OutputT")

# The model call: all inputs of a batch in, one result or exception per input out, in order.
RunBatch = Callable[[list[InputT]], Awaitable[list[OutputT | BaseException]]]


def _expired() -> BaseException:
    return TimeoutError("the caller's deadline passed while its call waited for a batch")


@dataclass(frozen=True)
class BatchPolicy:
    """How large a batch may grow and how long its first input may wait for company."""

    max_batch_size: int = 32
    max_wait_ms: float = 5.0

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_wait_ms < 0:
            raise ValueError(f"invalid batch policy {self}")


@dataclass(eq=False)
class _Call(Generic[InputT, OutputT]):
    items: list[InputT]
    future: asyncio.Future[list[OutputT]]
    arrived: float
    deadline: float | None = None


@dataclass(eq=False)
class _LoopState(Generic[InputT, OutputT]):
    """Everything bound to one event loop (asyncio primitives cannot move between loops)."""

    loop: asyncio.AbstractEventLoop
    slots: asyncio.Semaphore
    queue: deque[_Call[InputT, OutputT]] = field(default_factory=deque)
    arrival: asyncio.Event = field(default_factory=asyncio.Event)
    dispatcher: asyncio.Task[None] | None = None
    running: set[asyncio.Task[None]] = field(default_factory=set)


class Batcher(Generic[InputT, OutputT]):
    """Merges concurrent `submit` calls into batched calls of `run`.

    `concurrency` bounds the batches in flight at once (the model's own parallelism); a caller's
    inputs are never split between batches, so a call larger than `max_batch_size` runs alone.
    `expired()` makes the exception of a call whose deadline passed before it joined a batch.
    """

    def __init__(
        self,
        run: RunBatch[InputT, OutputT],
        policy: BatchPolicy,
        *,
        concurrency: int = 1,
        expired: Callable[[], BaseException] = _expired,
    ) -> None:
        self.run = run
        self.policy = policy
        self.concurrency = concurrency
        self.expired = expired
        self._state: _LoopState[InputT, OutputT] | None = None

    def _current(self) -> _LoopState[InputT, OutputT]:
        loop = asyncio.get_running_loop()
        # A new loop (a test client, a restarted server) gets fresh primitives; the old ones are dead.
        if self._state is None or self._state.loop is not loop:
            self._state = _LoopState(loop, asyncio.Semaphore(self.concurrency))
        return self._state

    async def submit(self, items: Sequence[InputT], deadline: float | None = None) -> list[OutputT]:
        """Wait for this call's results, in input order; raises the first of its inputs' errors, or
        `expired()` when `deadline` (`time.monotonic()`) passes before the call joins a batch."""
        if not items:
            return []
        state = self._current()
        future: asyncio.Future[list[OutputT]] = state.loop.create_future()
        state.queue.append(_Call(list(items), future, state.loop.time(), deadline))
        state.arrival.set()
        if state.dispatcher is None or state.dispatcher.done():
            # An empty context: the dispatcher serves every caller, so it must not carry (and stamp on
            # the batch's log lines) the request ID of whichever caller happened to start it.
            state.dispatcher = state.loop.create_task(self._dispatch(state), context=contextvars.Context())
        # If this caller is cancelled, so is `future`; the dispatcher then skips or ignores the call.
        return await future

    def queued_inputs(self) -> int:
        """Inputs waiting for a batch (not counting cancelled calls)."""
        return 0 if self._state is None else _queued(self._state.queue)

    async def _dispatch(self, state: _LoopState[InputT, OutputT]) -> None:
        """Form and launch batches until the queue is empty; `submit` restarts it when needed."""
        while True:
            # A free slot first: while the model is busy the queue grows into the next batch.
            await state.slots.acquire()
            try:
                batch = await self._gather(state)
            except BaseException:
                state.slots.release()
                raise
            if not batch:
                state.slots.release()
                return
            task = state.loop.create_task(self._run(state, batch))
            state.running.add(task)
            task.add_done_callback(state.running.discard)

    async def _gather(self, state: _LoopState[InputT, OutputT]) -> list[_Call[InputT, OutputT]]:
        """Wait until a batch is full or its oldest call has waited `max_wait_ms`, then take it."""
        _drop_cancelled(state.queue)
        if not state.queue:
            return []
        deadline = state.queue[0].arrived + self.policy.max_wait_ms / 1000
        while _queued(state.queue) < self.policy.max_batch_size:
            remaining = deadline - state.loop.time()
            if remaining <= 0:
                break
            state.arrival.clear()
            try:
                async with asyncio.timeout(remaining):
                    await state.arrival.wait()
            except TimeoutError:
                break
        batch: list[_Call[InputT, OutputT]] = []
        size = 0
        now = time.monotonic()
        while state.queue:
            call = state.queue[0]
            if call.future.done():  # cancelled while waiting
                state.queue.popleft()
                continue
            if call.deadline is not None and call.deadline <= now:
                # Its caller has given up: answered, and its place goes to one still waiting.
                state.queue.popleft()
                call.future.set_exception(self.expired())
                continue
            if batch and size + len(call.items) > self.policy.max_batch_size:
                break
            batch.append(state.queue.popleft())
            size += len(call.items)
        return batch

    async def _run(self, state: _LoopState[InputT, OutputT], batch: list[_Call[InputT, OutputT]]) -> None:
        """One model call for the whole batch; every caller gets its own slice of the outcomes."""
        try:
            outcomes = await self.run([item for call in batch for item in call.items])
            if len(outcomes) != sum(len(call.items) for call in batch):
                raise RuntimeError(f"batch call returned {len(outcomes)} outcomes for its inputs")
        except Exception as exc:  # noqa: BLE001  (the call itself failed: so did every input)
            for call in batch:
                if not call.future.done():
                    call.future.set_exception(exc)
            return
        except BaseException:
            # Cancelled (the loop is shutting down): nobody will answer these callers any more.
            for call in batch:
                call.future.cancel()
            raise
        finally:
            state.slots.release()
        start = 0
        for call in batch:
            mine = outcomes[start : start + len(call.items)]
            start += len(call.items)
            if call.future.done():  # the caller was cancelled while the model ran
                continue
            error = next((o for o in mine if isinstance(o, BaseException)), None)
            if error is not None:
                call.future.set_exception(error)
            else:  # no exception among them
                call.future.set_result(cast("list[OutputT]", mine))


def _drop_cancelled(queue: deque[_Call[InputT, OutputT]]) -> None:
    while queue and queue[0].future.done():
        queue.popleft()


def _queued(queue: deque[_Call[InputT, OutputT]]) -> int:
    return sum(len(call.items) for call in queue if not call.future.done())
