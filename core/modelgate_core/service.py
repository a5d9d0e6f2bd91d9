"""Build a model service's FastAPI app: one call wires everything the services share."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, FastAPI
from pydantic import Field

from modelgate_core.batching import BatchPolicy
from modelgate_core.config import CommonSettings
from modelgate_core.errors import install_error_handlers
from modelgate_core.health import Drain, health_router
from modelgate_core.logging import configure_logging
from modelgate_core.middleware import BodyLimitMiddleware, RequestContextMiddleware, limits_by_path
from modelgate_core.model import ModelRunner, ServedModel


class ServiceSettings(CommonSettings):
    """Settings every model service has."""

    artifacts_dir: Path = Path("artifacts")
    # Largest upload accepted (vision), in bytes.
    max_upload_bytes: int = Field(default=10 * 1024 * 1024, ge=1_024)


class BatchingSettings(ServiceSettings):
    """Settings of a service whose model batches concurrent requests (BATCHING, BATCH_MAX_SIZE,
    BATCH_MAX_WAIT_MS); see `modelgate_core.batching`."""

    batching: bool = True
    # Inputs per model call at most; a single request with more (an NLP batch of 64) still runs whole.
    batch_max_size: int = Field(default=32, ge=1, le=1024)
    # How long the first input of a batch may wait for others. 0: never wait while the model is idle;
    # batches then form only from what queues while it is busy, which on CPU is where they pay (a
    # batch saves little per input there, and a wait is added to every request at low load). Worth
    # raising where batches are much cheaper per input (GPU). Measured by scripts/bench_runtime.py.
    batch_max_wait_ms: float = Field(default=0.0, ge=0, le=1000)

    def batch_policy(self) -> BatchPolicy | None:
        """The policy for `ServedModel(batching=...)`, or None when batching is off."""
        if not self.batching:
            return None
        return BatchPolicy(max_batch_size=self.batch_max_size, max_wait_ms=self.batch_max_wait_ms)


def default_model_threads() -> int:
    """The cores this process may use, shared between the Gunicorn workers (at least 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = max(1, int(os.environ.get("WEB_CONCURRENCY", "1") or 1))
    return max(1, cores // workers)


class NeuralServiceSettings(BatchingSettings):
    """Settings of a service whose model runs on torch or ONNX Runtime (vision, nlp)."""

    # Which artifact answers: "onnx" (`<model>-onnx` on ONNX Runtime, the faster one: see
    # scripts/bench_runtime.py) or "torch" (`<model>`). Responses keep the model's name either way;
    # the version says which artifact answered (the ONNX one's ends in ".onnx.<key>").
    runtime: Literal["onnx", "torch"] = "onnx"
    # Intra-op threads per worker, for torch or ONNX Runtime; the default splits the cores between workers.
    torch_threads: int = Field(default_factory=default_model_threads, ge=1)
    # One model call at a time per worker: each one is already spread over `torch_threads`.
    inference_concurrency: int = Field(default=1, ge=1)

    def served_model(self, name: str, runner: ModelRunner[Any, Any]) -> ServedModel[Any, Any]:
        """`runner` served as `name`, from the artifact of the chosen runtime, with these settings."""
        return ServedModel(
            name,
            runner,
            self.artifacts_dir,
            artifact=f"{name}-onnx" if self.runtime == "onnx" else name,
            max_concurrency=self.inference_concurrency,
            batching=self.batch_policy(),
        )


def create_service_app(
    *,
    title: str,
    version: str,
    settings: ServiceSettings,
    models: Sequence[ServedModel[Any, Any]],
    routers: Sequence[APIRouter],
    upload_paths: Sequence[str] = (),
) -> FastAPI:
    """Return the service app: models loaded once in the lifespan (in the background, so liveness
    answers while they load), readiness 503 until every model is ready, common errors, JSON logs
    with request IDs, metrics, and body limits (`upload_paths` get `max_upload_bytes`)."""
    configure_logging(settings.service_name, settings.log_level, settings.log_json)

    drain = Drain()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        drain.watch_sigterm()
        # Load in the background: the server starts answering /health/live at once and
        # /health/ready turns 200 when every model is in memory.
        loading = asyncio.create_task(_load_all(models))
        yield
        loading.cancel()

    app = FastAPI(title=title, version=version, lifespan=lifespan)
    install_error_handlers(app)

    async def readiness() -> Mapping[str, str]:
        return {m.name: m.state if m.state != "failed" else f"failed: {m.error}" for m in models}

    app.include_router(health_router(readiness, drain))

    models_router = APIRouter(prefix="/v1", tags=["models"])

    @models_router.get("/models", summary="Models served by this service")
    async def list_models() -> dict[str, list[dict[str, Any]]]:
        return {"models": [m.info() for m in models]}

    app.include_router(models_router)
    for router in routers:
        app.include_router(router)

    app.add_middleware(
        BodyLimitMiddleware,
        limit_for=limits_by_path(
            settings.max_json_bytes, dict.fromkeys(upload_paths, settings.max_upload_bytes)
        ),
    )
    app.add_middleware(RequestContextMiddleware, service=settings.service_name)
    return app


async def _load_all(models: Sequence[ServedModel[Any, Any]]) -> None:
    for model in models:
        await model.load()
