"""nlp-service: sentiment behind one FastAPI app (`gunicorn nlp_service.app:app`)."""

from __future__ import annotations

import os

from fastapi import FastAPI
from pydantic import Field

from modelgate_core.model import ServedModel
from modelgate_core.service import ServiceSettings, create_service_app
from nlp_service.routes import nlp_router
from nlp_service.runners import SentimentRunner


def default_torch_threads() -> int:
    """The cores this process may use, shared between the Gunicorn workers (at least 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = max(1, int(os.environ.get("WEB_CONCURRENCY", "1") or 1))
    return max(1, cores // workers)


class NlpSettings(ServiceSettings):
    service_name: str = "nlp-service"
    # torch intra-op threads per worker; the default splits the cores between the workers.
    torch_threads: int = Field(default_factory=default_torch_threads, ge=1)
    # One inference at a time per worker: torch already spreads each one over `torch_threads`.
    inference_concurrency: int = Field(default=1, ge=1)


def create_app(settings: NlpSettings | None = None) -> FastAPI:
    """Build the app; the model loads in its lifespan, not here."""
    settings = settings or NlpSettings()
    runner = SentimentRunner(torch_threads=settings.torch_threads)
    sentiment = ServedModel(
        "sentiment", runner, settings.artifacts_dir, max_concurrency=settings.inference_concurrency
    )
    return create_service_app(
        title="ModelGate nlp-service",
        version="1.0.0",
        settings=settings,
        models=[sentiment],
        routers=[nlp_router(sentiment)],
    )


app = create_app()
