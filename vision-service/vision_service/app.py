"""vision-service: ImageNet classification behind one FastAPI app (`gunicorn vision_service.app:app`)."""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import Field

from modelgate_core.service import NeuralServiceSettings, create_service_app
from vision_service.onnx_runner import OnnxImageNetRunner
from vision_service.routes import vision_router
from vision_service.runners import ImageNetRunner

CLASSIFY_PATH = "/v1/vision/classify"


class VisionSettings(NeuralServiceSettings):
    service_name: str = "vision-service"
    # Off by default: on 2 CPU cores an image costs nearly as much in a batch as alone (ONNX: 4.5 ms,
    # 3.5-3.9 in batches of 8-32), and at 32 clients BATCHING=true gave +10-14% throughput with a p95
    # equal on a quiet machine but worse under contention (3 runs of scripts/bench_runtime.py).
    batching: bool = False
    # Largest image accepted, in pixels (width x height), whatever its file size: refuses bombs.
    max_image_pixels: int = Field(default=40_000_000, ge=1)


def create_app(settings: VisionSettings | None = None) -> FastAPI:
    """Build the app; the model loads in its lifespan, not here."""
    settings = settings or VisionSettings()
    runner_class = OnnxImageNetRunner if settings.runtime == "onnx" else ImageNetRunner
    runner = runner_class(max_pixels=settings.max_image_pixels, torch_threads=settings.torch_threads)
    imagenet = settings.served_model("imagenet", runner)
    return create_service_app(
        title="ModelGate vision-service",
        version="1.0.0",
        settings=settings,
        models=[imagenet],
        routers=[vision_router(imagenet)],
        upload_paths=[CLASSIFY_PATH],
    )


app = create_app()
