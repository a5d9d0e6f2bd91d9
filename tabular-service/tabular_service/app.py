"""tabular-service: the repository's `sklearn` and `onnx` models (`gunicorn tabular_service.app:app`)."""

from __future__ import annotations

from functools import partial

from fastapi import FastAPI

from modelgate_core.service import ServiceSettings, create_service_app
from tabular_service.onnx_runtime import OnnxRuntime
from tabular_service.routes import tabular_router
from tabular_service.sklearn_runtime import SklearnRuntime


class TabularSettings(ServiceSettings):
    service_name: str = "tabular-service"
    # scikit-learn predictions are short and release the GIL in numpy: a few may run at once.
    inference_concurrency: int = 4
    # The generic runtimes live here, so this service reports folders that no service can serve.
    report_unclaimed_models: bool = True
    # Intra-op threads per model call (OpenMP, BLAS, ONNX Runtime): calls already run side by side.
    model_threads: int = 1


def create_app(settings: TabularSettings | None = None) -> FastAPI:
    """Build the app; models load in its lifespan, not here."""
    settings = settings or TabularSettings()
    threads = settings.model_threads
    repository = settings.repository(
        "tabular",
        {"sklearn": partial(SklearnRuntime, threads=threads), "onnx": partial(OnnxRuntime, threads=threads)},
    )
    return create_service_app(
        title="ModelGate tabular-service",
        version="1.0.0",
        settings=settings,
        repository=repository,
        routers=[tabular_router(repository)],
    )


app = create_app()
