"""One loaded model version as a worker serves it: its runtime, its inference slot, its batcher,
and the requests in flight (so that an unload waits for them).

Per request: the input tensors are checked against the runtime's `inputs`, `preprocess` runs in a
worker thread outside the model's slot (decoding an image overlaps with the model serving another
request), `predict` runs in the slot, alone or merged with other requests' rows by the `Batcher`,
then `postprocess` in a thread again. A runtime with `light_steps` (trivial pre/postprocessing)
saves the hand-offs: all three in one thread, or the light ones on the loop around a batch.
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

from modelgate_core.batching import Batcher, BatchPolicy
from modelgate_core.context import record_timing
from modelgate_core.errors import BadRequest, ModelGateError
from modelgate_core.metrics import MODEL_BATCH_SIZE, MODEL_INFERENCE
from modelgate_core.oip.types import TensorSpec
from modelgate_core.repository.runtime import ModelRuntime, Tensors

logger = logging.getLogger("modelgate.model")


class _Part:
    """One request's prepared tensors inside a merged batch (the batcher sees it once per row)."""

    __slots__ = ("rows", "tensors")

    def __init__(self, tensors: Tensors, rows: int) -> None:
        self.tensors = tensors
        self.rows = rows


class ServedVersion:
    """A runtime that `load` has succeeded on, ready for requests."""

    def __init__(
        self,
        runtime: ModelRuntime,
        *,
        max_concurrency: int = 1,
        batching: BatchPolicy | None = None,
    ) -> None:
        self.runtime = runtime
        self.name = runtime.context.name
        self.version = runtime.context.version
        # Bounds parallel model calls in this worker: a neural runtime already spreads one call over
        # its threads, so running several at once would only oversubscribe the cores.
        self._limiter = anyio.CapacityLimiter(max_concurrency)
        self._batcher: Batcher[_Part, Tensors] | None = (
            Batcher(self._run_merged, batching, concurrency=max_concurrency)
            if batching is not None and runtime.batchable
            else None
        )
        self._in_flight = 0
        self._idle: asyncio.Event | None = None

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
        """Every output of the runtime for one request's inputs (checked here against `inputs`)."""
        params = parameters or {}
        rows = check_inputs(self.runtime.inputs, inputs)
        started = time.perf_counter()
        light = self.runtime.light_steps
        async with self.in_use():
            if self._batcher is None and light:
                outputs = await anyio.to_thread.run_sync(
                    self._infer_whole, inputs, params, limiter=self._limiter
                )
            else:
                if light:
                    prepared = self._preprocess(inputs, params)
                else:
                    prepared = await anyio.to_thread.run_sync(self._preprocess, inputs, params)
                if self._batcher is not None:
                    (raw, *_) = await self._batcher.submit([_Part(prepared, rows)] * max(rows, 1))
                else:
                    raw = await anyio.to_thread.run_sync(self._predict, prepared, limiter=self._limiter)
                if light:
                    outputs = self._postprocess(raw, params)
                else:
                    outputs = await anyio.to_thread.run_sync(self._postprocess, raw, params)
        record_timing("model", (time.perf_counter() - started) * 1000)
        return outputs

    def _infer_whole(self, inputs: Tensors, parameters: dict[str, Any]) -> Tensors:
        """All three steps in one worker thread (light steps, no batching)."""
        return self._postprocess(self._predict(self._preprocess(inputs, parameters)), parameters)

    def _preprocess(self, inputs: Tensors, parameters: dict[str, Any]) -> Tensors:
        return _guarded(self.name, "preprocess", self.runtime.preprocess, inputs, parameters)

    def _postprocess(self, raw: Tensors, parameters: dict[str, Any]) -> Tensors:
        return _guarded(self.name, "postprocess", self.runtime.postprocess, raw, parameters)

    def _predict(self, batch: Tensors) -> Tensors:
        started = time.perf_counter()
        outputs = _guarded(self.name, "predict", self.runtime.predict, batch)
        MODEL_INFERENCE.labels(self.name).observe(time.perf_counter() - started)
        MODEL_BATCH_SIZE.labels(self.name).observe(_rows_of(batch))
        return outputs

    async def _run_merged(self, items: list[_Part]) -> list[Tensors | BaseException]:
        parts = _distinct(items)
        merged = {
            name: np.concatenate([part.tensors[name] for part in parts], axis=0) for name in parts[0].tensors
        }
        try:
            raw = await anyio.to_thread.run_sync(self._predict, merged, limiter=self._limiter)
        except ModelGateError as exc:
            # One request's bad content failed the merged call: answer each request on its own, so
            # that only the one that sent it gets the error.
            if len(parts) == 1:
                raise
            logger.info("merged batch failed; running its requests one by one", extra={"error": str(exc)})
            return await self._run_each(parts)
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
