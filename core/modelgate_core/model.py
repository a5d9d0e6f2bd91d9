"""The model contract every ModelGate model server implements, and the runtime wrapper around it.

A model is a `ModelRunner` with four steps (as in LitServe): `load` once at start-up, `preprocess`
one input, `predict` a batch of preprocessed inputs, `postprocess` one raw output. `ServedModel` owns
a runner for a service: loads it off the event loop, tracks readiness, and runs inference in a worker
thread with bounded concurrency so that CPU-bound work never blocks the event loop. With a
`BatchPolicy`, concurrent `infer` calls are merged into one model call (see `modelgate_core.batching`).
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import anyio
import anyio.to_thread

from modelgate_core.artifacts import Manifest, read_manifest, verify_files
from modelgate_core.batching import Batcher, BatchPolicy
from modelgate_core.context import record_timing
from modelgate_core.errors import ServiceUnavailable
from modelgate_core.metrics import MODEL_BATCH_SIZE, MODEL_INFERENCE, MODEL_READY

logger = logging.getLogger("modelgate.model")

InputT = TypeVar("InputT")
OutputT = TypeVar("OutputT")

LoadState = Literal["pending", "loading", "ready", "failed"]


class ModelRunner(ABC, Generic[InputT, OutputT]):
    """Extension point: subclass this to serve a new model.

    `load` is called once per worker process, in a thread, with the model's artifact directory; the
    other three are called from worker threads for every request and must not touch the event loop.
    Raise a `ModelGateError` (e.g. `Unprocessable`) from `preprocess` to reject one bad input.
    """

    @abstractmethod
    def load(self, model_dir: Path, manifest: Manifest) -> None:
        """Load weights and anything else needed to predict."""

    @abstractmethod
    def preprocess(self, item: InputT) -> Any:
        """Turn one validated request input into what `predict` takes."""

    @abstractmethod
    def predict(self, batch: Sequence[Any]) -> Sequence[Any]:
        """Run the model on a batch of preprocessed inputs; one raw output per input, in order."""

    @abstractmethod
    def postprocess(self, raw: Any) -> OutputT:
        """Turn one raw model output into the response item."""


class ServedModel(Generic[InputT, OutputT]):
    """A runner, its artifact and its readiness, as one service serves it.

    `name` is the public name (readiness, `/v1/models`, metrics, responses); `artifact` is the folder
    under `artifacts_dir` to load, by default the same (e.g. "imagenet" served from "imagenet-onnx").
    `batching` merges concurrent `infer` calls into one model call; None runs each call on its own.
    """

    def __init__(
        self,
        name: str,
        runner: ModelRunner[InputT, OutputT],
        artifacts_dir: Path,
        *,
        max_concurrency: int = 1,
        batching: BatchPolicy | None = None,
        artifact: str | None = None,
    ) -> None:
        self.name = name
        self.runner = runner
        self.model_dir = artifacts_dir / (artifact or name)
        self.state: LoadState = "pending"
        self.error: str | None = None
        self.manifest: Manifest | None = None
        # Bounds parallel inference in this worker: torch already uses several threads per call,
        # so running many calls at once would only oversubscribe the cores.
        self._limiter = anyio.CapacityLimiter(max_concurrency)
        self._batcher: Batcher[InputT, OutputT] | None = (
            Batcher(self._run_batch, batching, concurrency=max_concurrency) if batching else None
        )

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def info(self) -> dict[str, Any]:
        """Name, version, domain and manifest metrics, for `/v1/models`."""
        if self.manifest is None:
            return {"name": self.name, "state": self.state}
        return {
            "name": self.name,
            "artifact": self.model_dir.name,
            "version": self.manifest.version,
            "domain": self.manifest.domain,
            "framework": self.manifest.framework,
            "created": self.manifest.created,
            "data_source": self.manifest.data_source,
            "metrics": self.manifest.metrics,
            "state": self.state,
        }

    def model_ref(self) -> dict[str, str]:
        """The `{"name", "version"}` object every prediction response carries: the public name and
        the version of the artifact that answered (an ONNX export's says so, see build_models.py)."""
        assert self.manifest is not None
        return {"name": self.name, "version": self.manifest.version}

    def _load_blocking(self) -> None:
        started = time.perf_counter()
        manifest = read_manifest(self.model_dir)
        verify_files(self.model_dir, manifest)
        self.runner.load(self.model_dir, manifest)
        self.manifest = manifest
        logger.info(
            "model loaded",
            extra={
                "model": self.name,
                "version": manifest.version,
                "load_seconds": round(time.perf_counter() - started, 3),
            },
        )

    async def load(self) -> None:
        """Load in a worker thread; failures are logged and leave the model not ready."""
        self.state = "loading"
        try:
            await anyio.to_thread.run_sync(self._load_blocking)
        except Exception as exc:
            self.state, self.error = "failed", f"{type(exc).__name__}: {exc}"
            logger.exception("model failed to load", extra={"model": self.name})
            return
        self.state = "ready"
        MODEL_READY.labels(self.name).set(1)

    def _predict(self, prepared: list[Any]) -> Sequence[Any]:
        started = time.perf_counter()
        raw = self.runner.predict(prepared)
        MODEL_INFERENCE.labels(self.name).observe(time.perf_counter() - started)
        MODEL_BATCH_SIZE.labels(self.name).observe(len(prepared))
        return raw

    def _infer_blocking(self, items: Sequence[InputT]) -> list[OutputT]:
        prepared = [self.runner.preprocess(item) for item in items]
        return [self.runner.postprocess(r) for r in self._predict(prepared)]

    def _infer_each_blocking(self, items: list[InputT]) -> list[OutputT | BaseException]:
        """A merged batch: an input that fails pre- or postprocessing gets its exception as its outcome,
        so that only its own caller fails; the others are predicted together."""
        outcomes: list[OutputT | BaseException] = []
        good: list[int] = []
        prepared: list[Any] = []
        for i, item in enumerate(items):
            try:
                prepared.append(self.runner.preprocess(item))
                good.append(i)
                outcomes.append(_PENDING)
            except Exception as exc:  # noqa: BLE001  (handed to that input's caller)
                outcomes.append(exc)
        if prepared:
            for i, raw in zip(good, self._predict(prepared), strict=True):
                try:
                    outcomes[i] = self.runner.postprocess(raw)
                except Exception as exc:  # noqa: BLE001  (handed to that input's caller)
                    outcomes[i] = exc
        return outcomes

    async def _run_batch(self, items: list[InputT]) -> list[OutputT | BaseException]:
        return await anyio.to_thread.run_sync(self._infer_each_blocking, items, limiter=self._limiter)

    async def infer(self, items: Sequence[InputT]) -> list[OutputT]:
        """Predict for a batch of inputs off the event loop; 503 while the model is not loaded.

        With batching on, these inputs may share one model call with other callers' inputs; they are
        never split, and the results come back in input order either way.
        """
        if not self.ready:
            raise ServiceUnavailable(f"Model '{self.name}' is not ready ({self.state})")
        started = time.perf_counter()
        if self._batcher is not None:
            results = await self._batcher.submit(items)
        else:
            results = await anyio.to_thread.run_sync(self._infer_blocking, items, limiter=self._limiter)
        record_timing("model", (time.perf_counter() - started) * 1000)
        return results


# Placeholder for an outcome not computed yet (replaced before `_infer_each_blocking` returns).
_PENDING: Any = object()
