"""Pieces every API response shares."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from modelgate_core.repository.traffic import Routed

# Request models refuse unknown fields (a typo is an error, not silently dropped) and do not coerce
# types (`"5.1"` or `true` for a number is an error, not a guess); JSON integers still pass as floats.
REQUEST_CONFIG = ConfigDict(extra="forbid", strict=True)


class StrictModel(BaseModel):
    """Base of every request model: see `REQUEST_CONFIG`."""

    model_config = REQUEST_CONFIG


class ModelRef(BaseModel):
    """Which model answered: its name, its artifact's version, and the repository version that served
    the request (the one a canary split chose, say)."""

    name: str = Field(examples=["iris"])
    version: str = Field(examples=["1.0.0+3f9a2c41d0b7"])
    model_version: str = Field(examples=["1"])

    @classmethod
    def of(cls, routed: Routed) -> ModelRef:
        return cls(name=routed.name, version=routed.artifact_version(), model_version=routed.version)


class ErrorDetail(BaseModel):
    field: str | None = None
    message: str
    type: str | None = None


class ErrorBody(BaseModel):
    code: str = Field(examples=["validation_error"])
    message: str = Field(examples=["Invalid request: sepal_length"])
    request_id: str | None = Field(default=None, examples=["9f1c2a7e5b3d4e6f8a0b1c2d3e4f5a6b"])
    details: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    """The one error shape of every ModelGate process."""

    error: ErrorBody


class ModelInfo(BaseModel):
    name: str
    version: str | None = None
    domain: str | None = None
    framework: str | None = None
    created: str | None = None
    data_source: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    state: str | None = None


class ModelList(BaseModel):
    models: list[ModelInfo]
