"""Build a model service's FastAPI app: one call wires everything the services share.

A service serves the folders of the model repository whose runtime it owns: over the Open Inference
Protocol (`/v2`), the `/v1/models/{name}:predict` call, and whatever domain routes it adds on top
of the same loaded models (e.g. `/v1/tabular/iris`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, FastAPI
from pydantic import Field

from modelgate_core import tracing
from modelgate_core.batching import BatchPolicy
from modelgate_core.config import CommonSettings
from modelgate_core.errors import install_error_handlers
from modelgate_core.health import Drain, health_router
from modelgate_core.logging import configure_logging
from modelgate_core.metrics import FASTAPI_TELEMETRY_OFF
from modelgate_core.middleware import BodyLimitMiddleware, RequestContextMiddleware, tensor_body_limits
from modelgate_core.oip.asgi_routes import InferRoutes
from modelgate_core.oip.dataplane import DataPlane
from modelgate_core.oip.rest import oip_components, oip_router
from modelgate_core.repository.control import default_control
from modelgate_core.repository.repository import ModelRepository, RuntimeFactory, ServingOptions


class ServiceSettings(CommonSettings):
    """Settings every model service has."""

    # `<name>/<version>/model-settings.json` folders; `make models` puts the built-in models here.
    model_repository: Path = Path("models")
    # How often each worker scans the repository for added, changed or removed version folders.
    model_poll_seconds: float = Field(default=2.0, gt=0, le=3600)
    # Whether this service lists folders no service can serve (bad JSON, unknown runtime) in its index.
    report_unclaimed_models: bool = False
    # Largest upload accepted (images, tensor bodies of /v2 infer and :predict), in bytes.
    max_upload_bytes: int = Field(default=10 * 1024 * 1024, ge=1_024)
    # Model calls one worker runs at once, per model version.
    inference_concurrency: int = Field(default=1, ge=1)
    # Requests one worker lets wait for one model version (preprocessing or queued for the model, not
    # yet in a model call); one more is refused at once with 503 and `Retry-After: 1` instead of
    # queueing until the gateway's timeout. Per version, like the model slot it waits for, so one slow
    # model cannot refuse another's requests. 64: a closed-loop benchmark at 64 connections on one
    # worker is never refused, and a full queue drains in about a second even for vision.
    max_queued_requests: int = Field(default=64, ge=1, le=100_000)
    # A light model (unbatched) whose requests lately cost less CPU than this runs on the event loop
    # instead of a worker-thread round trip; 0: never (for a model that may block without warning).
    model_inline_below_ms: float = Field(default=1.0, ge=0, le=50)
    # Where admin calls keep the traffic they set (default version, canary, shadow), shared by this
    # service's workers. Unset: beside the workers' control files, lost at restart and not shared with
    # replicas; a directory on a volume every replica mounts makes the calls lasting and shared.
    model_traffic_dir: Path | None = None

    def batch_policy(self) -> BatchPolicy | None:
        return None

    def repository(self, service: str, runtimes: Mapping[str, RuntimeFactory]) -> ModelRepository:
        """This worker's repository for `service`, serving with these settings."""
        return ModelRepository(
            self.model_repository,
            service,
            runtimes,
            default_control(),
            options=ServingOptions(
                max_concurrency=self.inference_concurrency,
                batching=self.batch_policy(),
                max_queued=self.max_queued_requests,
                inline_below_seconds=self.model_inline_below_ms / 1000,
            ),
            poll_seconds=self.model_poll_seconds,
            report_unclaimed=self.report_unclaimed_models,
            traffic_dir=self.model_traffic_dir,
        )


class BatchingSettings(ServiceSettings):
    """Settings of a service whose model batches concurrent requests (BATCHING, BATCH_MAX_SIZE,
    BATCH_MAX_WAIT_MS); see `modelgate_core.batching`."""

    batching: bool = True
    # Inputs per model call at most; a single request with more (an NLP batch of 64) still runs whole.
    batch_max_size: int = Field(default=32, ge=1, le=1024)
    # How long the first input of a batch may wait for others. 0: never wait while the model is idle;
    # batches then form only from what queues while it is busy, which on CPU is where they pay (a
    # batch saves little per input there, and a wait is added to every request at low load). Worth
    # raising where batches are much cheaper per input (GPU). Measured by bench/runtime.py.
    batch_max_wait_ms: float = Field(default=0.0, ge=0, le=1000)

    def batch_policy(self) -> BatchPolicy | None:
        """The batching policy of every model version served, or None when batching is off."""
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

    # Which backend a model folder that has both answers with: "onnx" (ONNX Runtime, the faster one:
    # see bench/runtime.py) or "torch". Responses keep the model's name either way; the
    # version says which artifact answered (the ONNX one's ends in ".onnx.<key>").
    runtime: Literal["onnx", "torch"] = "onnx"
    # Intra-op threads per worker, for torch or ONNX Runtime; the default splits the cores between workers.
    torch_threads: int = Field(default_factory=default_model_threads, ge=1)


def create_service_app(
    *,
    title: str,
    version: str,
    settings: ServiceSettings,
    repository: ModelRepository,
    routers: Sequence[APIRouter] = (),
    upload_paths: Sequence[str] = (),
) -> FastAPI:
    """Return the service app: the repository loaded in the lifespan (in the background, so liveness
    answers at once) and kept in step with its folder, readiness 503 until the first load pass is
    done, the OIP routes, common errors, JSON logs with request IDs, metrics, and body limits."""
    configure_logging(
        settings.service_name, settings.log_level, settings.log_json, settings.log_flush_seconds
    )

    drain = Drain(settings.drain_seconds)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        drain.watch_sigterm()
        tracing.setup(settings.service_name)  # here, in each worker: after Gunicorn's fork
        keeper = asyncio.create_task(_keep_in_step(repository))
        yield
        keeper.cancel()
        repository.control.forget_self()
        tracing.shutdown()

    app = FastAPI(title=title, version=version, lifespan=lifespan, telemetry=FASTAPI_TELEMETRY_OFF)
    install_error_handlers(app)

    async def readiness() -> Mapping[str, str]:
        return {"repository": "ready" if repository.started else "loading"}

    app.include_router(health_router(readiness, drain))

    models_router = APIRouter(prefix="/v1", tags=["models"])

    @models_router.get("/models", summary="Models served by this service")
    async def list_models() -> dict[str, list[dict[str, Any]]]:
        return {"models": model_catalogue(repository, settings.service_name)}

    app.include_router(models_router)
    plane = DataPlane(
        repository,
        server_name=settings.service_name,
        server_version=version,
        ready=lambda: repository.started,
    )
    app.include_router(oip_router(plane))
    for router in routers:
        app.include_router(router)
    _document_oip(app)

    # Innermost: OIP infer is answered here, after the body limit and request context.
    app.add_middleware(InferRoutes, plane=plane)
    app.add_middleware(
        BodyLimitMiddleware,
        limit_for=tensor_body_limits(settings.max_json_bytes, settings.max_upload_bytes, upload_paths),
    )
    app.add_middleware(RequestContextMiddleware, service=settings.service_name)
    return app


def model_catalogue(repository: ModelRepository, service: str) -> list[dict[str, Any]]:
    """Name, version, domain, manifest metrics and state of every version, for `/v1/models`."""
    catalogue: list[dict[str, Any]] = []
    for entry in repository.index():
        info: dict[str, Any] = {"name": entry.name, "state": entry.state}
        if entry.state == "READY":
            served = repository.get(entry.name, entry.version)
            manifest = served.runtime.context.manifest
            version = served.artifact_version()
            info.update(version=version, framework=served.runtime.platform)
            if manifest is not None:
                info.update(
                    domain=manifest.domain,
                    created=manifest.created,
                    data_source=manifest.data_source,
                    metrics=manifest.metrics,
                )
                # The manifest describes its own artifact; a folder answering from another one (torch
                # beside an ONNX export) is described by the runtime that loaded it.
                if version == manifest.version:
                    info["framework"] = manifest.framework
        catalogue.append(info)
    return catalogue


async def _keep_in_step(repository: ModelRepository) -> None:
    await repository.start()
    await repository.run()


def _document_oip(app: FastAPI) -> None:
    """Add the OIP component schemas that the `/v2` operations refer to."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()
        schema.setdefault("components", {}).setdefault("schemas", {}).update(oip_components())
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customise it
