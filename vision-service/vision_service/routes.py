"""The built-in classification route (`/v1/vision/classify`, a multipart upload), kept as it was for
its clients, answered by the repository's `imagenet` model (image-classification runtime)."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, File, Query, Request, UploadFile

from modelgate_core.context import annotate
from modelgate_core.errors import UnsupportedMediaType
from modelgate_core.repository.repository import ModelRepository
from modelgate_core.schemas.common import ErrorResponse, ModelRef
from modelgate_core.schemas.vision import (
    ACCEPTED_IMAGE_TYPES,
    TOP_K_DEFAULT,
    TOP_K_MAX,
    ClassifyResponse,
    ClassScore,
)

ERRORS = {code: {"model": ErrorResponse} for code in (413, 415, 422, 503)}


async def require_multipart(request: Request) -> None:
    """Refuse anything but a multipart upload with 415 (otherwise it would read as 'file missing')."""
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise UnsupportedMediaType("Send the image as multipart/form-data with the field 'file'")


def vision_router(repository: ModelRepository) -> APIRouter:
    router = APIRouter(prefix="/v1/vision", tags=["vision"], responses=ERRORS)  # type: ignore[arg-type]

    @router.post(
        "/classify",
        summary="Classify an image into the 1000 ImageNet classes",
        dependencies=[Depends(require_multipart)],
    )
    async def classify(
        file: Annotated[UploadFile, File(description=f"The image: {', '.join(ACCEPTED_IMAGE_TYPES)}")],
        top_k: Annotated[
            int, Query(ge=1, le=TOP_K_MAX, description="How many classes to return")
        ] = TOP_K_DEFAULT,
    ) -> ClassifyResponse:
        # The body limit middleware has already bounded the size; the format is checked from the
        # bytes themselves, off the event loop, in the runtime.
        data = await file.read()
        annotate(upload_bytes=len(data))
        served = repository.require("imagenet")
        out = await served.infer({"image": np.array([data], dtype=object)}, {"top_k": top_k})
        scores = [
            ClassScore(
                label=label.decode() if isinstance(label, bytes) else str(label),
                class_id=int(class_id),
                score=round(float(score), 6),
            )
            for label, class_id, score in zip(
                out["label"][0], out["class_id"][0], out["score"][0], strict=True
            )
        ]
        return ClassifyResponse(predictions=scores, model=ModelRef.of(served))

    return router
