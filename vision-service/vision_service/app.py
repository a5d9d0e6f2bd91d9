"""vision-service: the repository's `image-classification` models (`gunicorn vision_service.app:app`)."""

from __future__ import annotations

from functools import partial

from fastapi import FastAPI
from pydantic import Field

from modelgate_core.service import NeuralServiceSettings, create_service_app
from vision_service.decode import DecodeBudget
from vision_service.image_runtime import DECODES_AT_ONCE, DEFAULT_MAX_PIXELS, ImageClassificationRuntime
from vision_service.routes import vision_router

CLASSIFY_PATH = "/v1/vision/classify"


class VisionSettings(NeuralServiceSettings):
    service_name: str = "vision-service"
    # Off by default: on 2 CPU cores an image costs nearly as much in a batch as alone, and under
    # contention batching made p95 worse (bench/runtime.py; docs/runtime.md).
    batching: bool = False
    # Largest image accepted, in pixels (width x height), whatever its file size, checked from the header
    # before anything is decoded (413 beyond). The default, 4096 x 4096, and why: image_runtime.py.
    vision_max_image_pixels: int = Field(default=DEFAULT_MAX_PIXELS, ge=1)


def create_app(settings: VisionSettings | None = None) -> FastAPI:
    """Build the app; models load in its lifespan, not here."""
    settings = settings or VisionSettings()
    runtime = partial(
        ImageClassificationRuntime,
        backend=settings.runtime,
        threads=settings.torch_threads,
        max_pixels=settings.vision_max_image_pixels,
        # One for every model this worker serves: the memory its decodes hold is bounded per worker.
        decode_budget=DecodeBudget(DECODES_AT_ONCE * settings.vision_max_image_pixels),
    )
    repository = settings.repository("vision", {"image-classification": runtime})
    return create_service_app(
        title="ModelGate vision-service",
        version="1.0.0",
        settings=settings,
        repository=repository,
        routers=[vision_router(repository)],
        upload_paths=[CLASSIFY_PATH],
    )


app = create_app()
