"""tabular-service: iris and fraud behind one FastAPI app (`gunicorn tabular_service.app:app`)."""

from __future__ import annotations

from fastapi import FastAPI

from modelgate_core.model import ServedModel
from modelgate_core.service import ServiceSettings, create_service_app
from tabular_service.routes import tabular_router
from tabular_service.runners import FraudRunner, IrisRunner


class TabularSettings(ServiceSettings):
    service_name: str = "tabular-service"
    # scikit-learn predictions are short and release the GIL in numpy: a few may run at once.
    inference_concurrency: int = 4


def create_app(settings: TabularSettings | None = None) -> FastAPI:
    """Build the app; models load in its lifespan, not here."""
    settings = settings or TabularSettings()
    iris = ServedModel(
        "iris", IrisRunner(), settings.artifacts_dir, max_concurrency=settings.inference_concurrency
    )
    fraud = ServedModel(
        "fraud", FraudRunner(), settings.artifacts_dir, max_concurrency=settings.inference_concurrency
    )
    return create_service_app(
        title="ModelGate tabular-service",
        version="1.0.0",
        settings=settings,
        models=[iris, fraud],
        routers=[tabular_router(iris, fraud)],
    )


app = create_app()
