"""nlp-service: the repository's `text-classification` models (`gunicorn nlp_service.app:app`)."""

from __future__ import annotations

from functools import partial

from fastapi import FastAPI

from modelgate_core.service import NeuralServiceSettings, create_service_app
from nlp_service.routes import nlp_router
from nlp_service.text_runtime import TextClassificationRuntime


class NlpSettings(NeuralServiceSettings):
    service_name: str = "nlp-service"


def create_app(settings: NlpSettings | None = None) -> FastAPI:
    """Build the app; models load in its lifespan, not here."""
    settings = settings or NlpSettings()
    runtime = partial(TextClassificationRuntime, backend=settings.runtime, threads=settings.torch_threads)
    repository = settings.repository("nlp", {"text-classification": runtime})
    return create_service_app(
        title="ModelGate nlp-service",
        version="1.0.0",
        settings=settings,
        repository=repository,
        routers=[nlp_router(repository)],
    )


app = create_app()
