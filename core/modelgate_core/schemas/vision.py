"""Image classification."""

from __future__ import annotations

from pydantic import BaseModel, Field

from modelgate_core.schemas.common import ModelRef

ACCEPTED_IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp")
TOP_K_DEFAULT = 5
TOP_K_MAX = 10


class ClassScore(BaseModel):
    label: str = Field(examples=["espresso"])
    class_id: int = Field(ge=0, examples=[967])
    score: float = Field(ge=0, le=1, examples=[0.95])


class ClassifyResponse(BaseModel):
    predictions: list[ClassScore]
    model: ModelRef
