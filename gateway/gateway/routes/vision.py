"""Vision routes: image classification."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from gateway.deps import State, VisionKey
from gateway.routes.proxy import PROXY_ERRORS, forward
from modelgate_core.errors import UnsupportedMediaType
from modelgate_core.schemas.vision import (
    ACCEPTED_IMAGE_TYPES,
    TOP_K_DEFAULT,
    TOP_K_MAX,
    ClassifyResponse,
)

router = APIRouter(prefix="/vision", tags=["vision"], responses=PROXY_ERRORS)  # type: ignore[arg-type]

# The upload is streamed through (size-limited while read) instead of parsed here: the vision service
# decodes and checks the image anyway, so parsing the multipart body twice would only cost time.
# The body is still documented as what it is.
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": f"The image: {', '.join(ACCEPTED_IMAGE_TYPES)}",
                        }
                    },
                }
            }
        },
    }
}


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    summary="Classify an image into the 1000 ImageNet classes",
    openapi_extra=_UPLOAD_BODY,
    responses={415: {"description": "Not a multipart upload, or not a JPEG, PNG or WebP image"}},
)
async def classify(
    _key: VisionKey,
    state: State,
    request: Request,
    top_k: Annotated[
        int, Query(ge=1, le=TOP_K_MAX, description="How many classes to return")
    ] = TOP_K_DEFAULT,
) -> Response:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise UnsupportedMediaType("Send the image as multipart/form-data with the field 'file'")
    # Cached only when asked for; then the key covers the exact upload bytes and top_k.
    cache_input = (
        (await request.body()) + f"|top_k={top_k}".encode() if state.settings.response_cache_vision else None
    )
    return await forward(state, "vision", request, cache_input)
