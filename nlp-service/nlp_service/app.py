"""nlp-service: sentiment behind one FastAPI app (`gunicorn nlp_service.app:app`)."""

from __future__ import annotations

from fastapi import FastAPI

from modelgate_core.service import NeuralServiceSettings, create_service_app
from nlp_service.onnx_runner import OnnxSentimentRunner
from nlp_service.routes import nlp_router
from nlp_service.runners import SentimentRunner


class NlpSettings(NeuralServiceSettings):
    service_name: str = "nlp-service"


def create_app(settings: NlpSettings | None = None) -> FastAPI:
    """Build the app; the model loads in its lifespan, not here."""
    settings = settings or NlpSettings()
    runner_class = OnnxSentimentRunner if settings.runtime == "onnx" else SentimentRunner
    sentiment = settings.served_model("sentiment", runner_class(torch_threads=settings.torch_threads))
    return create_service_app(
        title="ModelGate nlp-service",
        version="1.0.0",
        settings=settings,
        models=[sentiment],
        routers=[nlp_router(sentiment)],
    )


app = create_app()
