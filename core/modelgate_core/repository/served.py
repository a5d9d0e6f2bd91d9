"""One loaded model version as a worker serves it: its runtime, its inference slot, its batcher,
and the requests in flight (so that an unload waits for them).

Per request: the input tensors are checked against the runtime's `inputs`, `preprocess` runs in a
worker thread outside the model's slot (decoding an image overlaps with the model serving another
request), `predict` runs in the slot, alone or merged with other requests' rows by the `Batcher`,
then `postprocess` in a thread again. A runtime with `light_steps` (trivial pre/postprocessing)
saves the hand-offs: all three in one thread, or the light ones on the loop around a batch; and when
its whole requests are faster than a thread round trip (`INLINE_BELOW_SECONDS`), on the loop itself.

Backpressure: at most `max_queued` requests wait for the version in one worker (admitted, preprocessing
or queued for the model, not yet in a model call); one more is refused at once with 503 and
`Retry-After`, so overload becomes fast refusals rather than a queue that grows until every request in
it times out. A request whose caller's deadline (`context.current_deadline`, from the gateway's
`X-Request-Deadline-Ms`) has passed is dropped unrun: on arrival, before its model call, and by the
batcher while it waits for a batch; the caller has gone, so nothing is spent on its answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread
import numpy as np
from prometheus_client import Counter

from modelgate_core import tracing
from modelgate_core.batching import Batcher, BatchPolicy
from modelgate_core.context import current_deadline, record_timing
from modelgate_core.errors import BadRequest, GatewayTimeout, ModelGateError, ServiceUnavailable
from modelgate_core.metrics import (
    MODEL_BATCH_SIZE,
    MODEL_INFERENCE,
    VERSION_REQUEST_LATENCY,
    VERSION_REQUESTS,
)
from modelgate_core.oip.types import TensorSpec
from modelgate_core.repository.runtime import ModelRuntime, Tensors
from modelgate_core.repository.traffic import Routed

logger = logging.getLogger("modelgate.model")

# A light runtime (unbatched) whose whole request took less than this lately runs on the event loop: a
# round trip to a worker thread costs about as much as such a call (the profile is in the benchmark
# report), and the loop is held no longer than this. The first call, and any after a slow one, go to a
# thread. `ServingOptions.inline_below_seconds=0` never runs a model on the loop.
INLINE_BELOW_SECONDS = 0.001
# A call whose wall time passes this many times the bound waited on something besides the CPU.
INLINE_WALL_FACTOR = 20

# Requests one version may have waiting in one worker unless told otherwise (MAX_QUEUED_REQUESTS).
DEFAULT_MAX_QUEUED = 64
# Seconds a refused caller is told to wait: a queue drains in well under that (the bound keeps it short).
RETRY_AFTER_SECONDS = 1
_RETRY_AFTER = {"retry-after": str(RETRY_AFTER_SECONDS)}

MODEL_DROPPED = Counter(
    "modelgate_dropped_requests_total",
    "Requests a model version did not run: refused on arrival with its queue full (reason=queue_full), "
    "or dropped because the caller's deadline had passed (reason=deadline).",
    ["model", "reason"],
)


class DeadlineExceeded(GatewayTimeout):
    """The caller's deadline passed before the model began its request: dropped without running it.
    Rarely read by anyone: the caller has gone (the gateway has answered its client 504 already)."""

    code = "deadline_exceeded"


class _Part:
    """One request inside this version: its deadline, whether it still waits for the model (counted
    in `ServedVersion.waiting`), and its prepared tensors (in a merged batch, once per row)."""

    __slots__ = ("deadline", "rows", "tensors", "trace", "waiting")

    def __init__(self, rows: int, deadline: float | None) -> None:
        self.rows = rows
        self.deadline = deadline
        self.tensors: Tensors = {}
        self.waiting = True
        self.trace: tracing.Waiting | None = None  # for its batch's spans (`tracing.capture`)


class _Slot:
    """`async with` holds one token of `limiter` (a model slot) for the calling task; without a trip
    through the event loop when one is free (anyio's own `async with` yields once even then), and
    after any task already waiting (`acquire_nowait` refuses while the limiter has a queue)."""

    __slots__ = ("limiter",)

    def __init__(self, limiter: anyio.CapacityLimiter) -> None:
        self.limiter = limiter

    async def __aenter__(self) -> None:
        try:
            self.limiter.acquire_nowait()
        except anyio.WouldBlock:
            await self.limiter.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self.limiter.release()


class ServedVersion:
    """A runtime that `load` has succeeded on, ready for requests."""

    def __init__(
        self,
        runtime: ModelRuntime,
        *,
        max_concurrency: int = 1,
        batching: BatchPolicy | None = None,
        max_queued: int = DEFAULT_MAX_QUEUED,
        inline_below_seconds: float = INLINE_BELOW_SECONDS,
    ) -> None:
        if max_queued < 1:
            raise ValueError(f"max_queued must be at least 1, not {max_queued}")
        self.runtime = runtime
        self.name = runtime.context.name
        self.version = runtime.context.version
        # Bounds parallel model calls in this worker: a neural runtime already spreads one call over
        # its threads, so running several at once would only oversubscribe the cores.
        self._limiter = anyio.CapacityLimiter(max_concurrency)
        self._slot = _Slot(self._limiter)
        # The model calls' threads, taken only while holding `_limiter` (so never waited for): not the
        # default thread limiter, which preprocessing threads may all hold under load.
        self._model_threads = anyio.CapacityLimiter(max_concurrency)
        self._batcher: Batcher[_Part, Tensors] | None = (
            Batcher(self._run_merged, batching, concurrency=max_concurrency, expired=self._dropped_late)
            if batching is not None and runtime.batchable
            else None
        )
        self.max_queued = max_queued
        # Requests admitted and not yet in a model call (see `_Part.waiting`).
        self.waiting = 0
        self._refused = MODEL_DROPPED.labels(self.name, "queue_full")
        self._late = MODEL_DROPPED.labels(self.name, "deadline")
        self._in_flight = 0
        self._idle: asyncio.Event | None = None
        self._inference = MODEL_INFERENCE.labels(self.name)
        self._batch_size = MODEL_BATCH_SIZE.labels(self.name)
        self._trace_attributes = {tracing.MODEL_NAME: self.name, tracing.MODEL_VERSION: self.version}
        self._outcomes = {
            outcome: VERSION_REQUESTS.labels(self.name, self.version, outcome)
            for outcome in ("ok", "client_error", "error")
        }
        self._latency = VERSION_REQUEST_LATENCY.labels(self.name, self.version)
        # This version as a pinned request uses it: made once, not per request.
        self.pinned = Routed(self)
        self.inline_below_seconds = inline_below_seconds
        # Recent duration of one whole light request (see `_infer_whole`); unknown until the first.
        self.recent_whole_seconds = float("inf")

    @property
    def inputs(self) -> list[TensorSpec]:
        return self.runtime.inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self.runtime.outputs

    def artifact_version(self) -> str:
        """The version string a `/v1` answer names: the built artifact's, else the folder's."""
        return self.runtime.artifact_version() or self.version

    @asynccontextmanager
    async def in_use(self) -> AsyncIterator[None]:
        """Count a request in flight for as long as it uses this version."""
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0 and self._idle is not None:
                self._idle.set()

    async def drained(self, patience: float) -> bool:
        """Wait until no request uses this version (at most `patience` s); False if some still do."""
        if self._in_flight == 0:
            return True
        self._idle = asyncio.Event()
        try:
            async with asyncio.timeout(patience):
                while self._in_flight:
                    self._idle.clear()
                    await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def infer(self, inputs: Tensors, parameters: dict[str, Any] | None = None) -> Tensors:
        """Every output of the runtime for one request's inputs (checked here against `inputs`).

        Raises `ServiceUnavailable` (503, `Retry-After`) when `max_queued` requests already wait, and
        `DeadlineExceeded` when the caller's deadline passes before the model call begins."""
        started = time.perf_counter()
        try:
            outputs = await self._infer(inputs, parameters)
        except ModelGateError as exc:
            self._outcomes["client_error" if exc.status_code < 500 else "error"].inc()
            raise
        except BaseException:
            self._outcomes["error"].inc()
            raise
        self._outcomes["ok"].inc()
        elapsed = time.perf_counter() - started
        self._latency.observe(elapsed)
        record_timing("model", elapsed * 1000)
        return outputs

    async def _infer(self, inputs: Tensors, parameters: dict[str, Any] | None) -> Tensors:
        params = parameters or {}
        rows = check_inputs(self.runtime.inputs, inputs)
        part = _Part(rows, current_deadline())
        self._check_deadline(part)  # before preprocessing
        if self.waiting >= self.max_queued:
            self._refused.inc()
            raise ServiceUnavailable(
                f"Model '{self.name}' is busy: {self.waiting} requests already wait for it in this "
                f"worker; retry in {RETRY_AFTER_SECONDS} s",
                headers=_RETRY_AFTER,
            )
        self.waiting += 1
        light = self.runtime.light_steps
        try:
            async with self.in_use():
                if self._batcher is None and light:
                    queued = tracing.begin("model.queue", self._trace_attributes)
                    async with self._slot:
                        tracing.finish(queued)
                        self._begin(part)
                        if self.recent_whole_seconds < self.inline_below_seconds:
                            outputs = self._infer_whole(inputs, params)  # on the loop: see the module doc
                        else:
                            outputs = await anyio.to_thread.run_sync(
                                self._infer_whole, inputs, params, limiter=self._model_threads
                            )
                else:
                    if light:
                        part.tensors = self._preprocess(inputs, params)
                    else:
                        part.tensors = await anyio.to_thread.run_sync(self._preprocess, inputs, params)
                    if self._batcher is not None:
                        part.trace = tracing.capture()
                        (raw, *_) = await self._batcher.submit([part] * max(rows, 1), part.deadline)
                    else:
                        queued = tracing.begin("model.queue", self._trace_attributes)
                        async with self._slot:
                            tracing.finish(queued)
                            self._begin(part)
                            raw = await anyio.to_thread.run_sync(
                                self._predict, part.tensors, limiter=self._model_threads
                            )
                    if light:
                        outputs = self._postprocess(raw, params)
                    else:
                        outputs = await anyio.to_thread.run_sync(self._postprocess, raw, params)
        finally:
            self._leave_queue(part)
        return outputs

    def _leave_queue(self, part: _Part) -> None:
        if part.waiting:
            part.waiting = False
            self.waiting -= 1

    def _begin(self, part: _Part) -> None:
        """The request has the model: it no longer waits, and runs only if its caller still does."""
        self._leave_queue(part)
        self._check_deadline(part)

    def _check_deadline(self, part: _Part) -> None:
        if part.deadline is not None and part.deadline <= time.monotonic():
            raise self._dropped_late()

    def _dropped_late(self) -> DeadlineExceeded:
        self._late.inc()
        return DeadlineExceeded(
            f"The caller's deadline passed before model '{self.name}' ran this request; it was dropped"
        )

    def _infer_whole(self, inputs: Tensors, parameters: dict[str, Any]) -> Tensors:
        """All three steps at once (light steps, no batching), timed for `recent_whole_seconds`."""
        started, cpu_started = time.perf_counter(), time.thread_time()
        try:
            return self._postprocess(self._predict(self._preprocess(inputs, parameters)), parameters)
        finally:
            wall, cpu = time.perf_counter() - started, time.thread_time() - cpu_started
            # What the call would hold the loop for: its CPU time (in a worker thread its wall time also
            # counts the waits for the GIL, which the loop holds under load) unless it waits on something
            # else (I/O, sleep): a wall time far above the bound marks it slow whatever its CPU.
            cost = cpu if wall < INLINE_WALL_FACTOR * self.inline_below_seconds else wall
            recent = self.recent_whole_seconds
            # A moving average: one slow call (a pause, a big input) moves the model off the loop at once
            # and it comes back only after calls are fast again.
            self.recent_whole_seconds = (
                cost if recent == float("inf") else max(cost, 0.8 * recent + 0.2 * cost)
            )

    def _preprocess(self, inputs: Tensors, parameters: dict[str, Any]) -> Tensors:
        with tracing.step("model.preprocess", self._trace_attributes):
            return _guarded(self.name, "preprocess", self.runtime.preprocess, inputs, parameters)

    def _postprocess(self, raw: Tensors, parameters: dict[str, Any]) -> Tensors:
        with tracing.step("model.postprocess", self._trace_attributes):
            return _guarded(self.name, "postprocess", self.runtime.postprocess, raw, parameters)

    def _predict(self, batch: Tensors) -> Tensors:
        # Traced here for a request's own call; a batch's call is traced by `_run_merged`.
        with tracing.step("model.predict", self._trace_attributes) as span:
            started = time.perf_counter()
            outputs = _guarded(self.name, "predict", self.runtime.predict, batch)
            self._inference.observe(time.perf_counter() - started)
            rows = _rows_of(batch)
            self._batch_size.observe(rows)
            if span is not None:
                span.set_attribute(tracing.BATCH_SIZE, rows)
            return outputs

    async def _run_merged(self, items: list[_Part]) -> list[Tensors | BaseException]:
        parts = _distinct(items)
        for part in parts:
            self._leave_queue(part)
        merged = {
            name: np.concatenate([part.tensors[name] for part in parts], axis=0) for name in parts[0].tensors
        }
        traced = (
            None
            if tracing.tracer is None
            else tracing.open_batch([part.trace for part in parts], self._trace_attributes, len(items))
        )
        try:
            raw = await anyio.to_thread.run_sync(self._predict, merged, limiter=self._limiter)
        except ModelGateError as exc:
            tracing.close_batch(traced, exc)
            # One request's bad content failed the merged call: answer each request on its own, so
            # that only the one that sent it gets the error.
            if len(parts) == 1:
                raise
            logger.info("merged batch failed; running its requests one by one", extra={"error": str(exc)})
            return await self._run_each(parts)
        tracing.close_batch(traced)
        outcomes: list[Tensors | BaseException] = []
        start = 0
        for part in parts:
            mine = {name: array[start : start + part.rows] for name, array in raw.items()}
            start += part.rows
            outcomes.extend([mine] * max(part.rows, 1))
        return outcomes

    async def _run_each(self, parts: Sequence[_Part]) -> list[Tensors | BaseException]:
        outcomes: list[Tensors | BaseException] = []
        for part in parts:
            try:
                raw: Tensors | BaseException = await anyio.to_thread.run_sync(
                    self._predict, part.tensors, limiter=self._limiter
                )
            except ModelGateError as exc:
                raw = exc
            outcomes.extend([raw] * max(part.rows, 1))
        return outcomes


def _distinct(items: list[_Part]) -> list[_Part]:
    """The parts of a merged batch in order (each appears once per row, consecutively)."""
    parts: list[_Part] = []
    for item in items:
        if not parts or parts[-1] is not item:
            parts.append(item)
    return parts


def _rows_of(tensors: Tensors) -> int:
    for array in tensors.values():
        return int(array.shape[0]) if array.ndim else 1
    return 0


def _guarded(model: str, step: str, fn: Any, *args: Any) -> Tensors:
    """Run one runtime step; an unexpected exception from inside the model is a clear 400 naming the
    step, since the inputs have already passed the protocol checks (never a 500 from the model)."""
    try:
        result: Tensors = fn(*args)
    except ModelGateError:
        raise
    except (ValueError, TypeError, IndexError, KeyError, ArithmeticError) as exc:
        logger.info("model refused its input", extra={"model": model, "step": step, "error": repr(exc)})
        raise BadRequest(f"Model '{model}' could not {step} this input: {exc}") from exc
    return result


def check_inputs(specs: Sequence[TensorSpec], inputs: Tensors) -> int:
    """Check names, ranks and fixed dimensions; return the rows (first dimension) they share."""
    expected = {spec.name: spec for spec in specs}
    unknown = sorted(set(inputs) - set(expected))
    if unknown:
        raise BadRequest(f"Unknown input {unknown[0]!r}; the model takes {', '.join(expected)}")
    missing = [name for name in expected if name not in inputs]
    if missing:
        raise BadRequest(f"Missing input {missing[0]!r}")
    rows: int | None = None
    for name, array in inputs.items():
        spec = expected[name]
        shape = list(array.shape)
        if len(shape) != len(spec.shape) or any(
            want not in (-1, got) for want, got in zip(spec.shape, shape, strict=True)
        ):
            raise BadRequest(f"Input {name!r} has shape {shape}; the model expects {spec.shape}")
        if shape:
            if rows is not None and shape[0] != rows:
                raise BadRequest(f"Inputs disagree on the batch size ({rows} vs {shape[0]} for {name!r})")
            rows = shape[0]
    return rows if rows is not None else 1
