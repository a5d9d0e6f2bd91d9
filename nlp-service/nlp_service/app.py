"""nlp-service: the repository's `text-classification` models (`gunicorn nlp_service.app:app`)."""

from __future__ import annotations

from functools import partial

from fastapi import FastAPI

from modelgate_core.service import NeuralServiceSettings, create_service_app
from nlp_service.routes import nlp_router
from nlp_service.text_runtime import TextClassificationRuntime


class NlpSettings(NeuralServiceSettings):
    service_name: str = "nlp-service"
    # What a text longer than the model reads (its max_length tokens) gets: cut to fit, with
    # `truncated: true` in the answer (true), or refused with 422 on /v1, 400 on /v2 (false). A model's
    # `"truncate"` in its model-settings.json parameters overrides this for that model.
    nlp_truncate: bool = True


def create_app(settings: NlpSettings | None = None) -> FastAPI:
    """Build the app; models load in its lifespan, not here."""
    settings = settings or NlpSettings()
    runtime = partial(
        TextClassificationRuntime,
        backend=settings.runtime,
        threads=settings.torch_threads,
        truncate=settings.nlp_truncate,
    )
    repository = settings.repository("nlp", {"text-classification": runtime})
    return create_service_app(
        title="ModelGate nlp-service",
        version="1.0.0",
        settings=settings,
        repository=repository,
        routers=[nlp_router(repository)],
    )


app = create_app()
