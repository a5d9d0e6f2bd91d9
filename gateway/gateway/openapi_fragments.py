"""OpenAPI fragments for the routes whose bodies the gateway reads raw (binary tensors, optional bodies),
which FastAPI therefore cannot describe by itself. Each route names its bodies and answers with these;
`gateway.openapi` adds the schemas they reference (`DOCUMENTED_MODELS`) to the document."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gateway.upstream import BINARY_HEADER
from modelgate_core.oip.types import (
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    ModelReady,
    ModelState,
    OipError,
    Parameters,
    RepositoryEntry,
    ServerMetadata,
)
from modelgate_core.repository.policy import Traffic
from modelgate_core.schemas.common import ErrorResponse


class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool


class RepositoryIndexRequest(BaseModel):
    """Optional body of `POST /v2/repository/index`; tritonclient sends none."""

    model_config = ConfigDict(extra="forbid", strict=True)

    ready: bool = Field(default=False, description="Only the model versions that are READY")


class RepositoryLoadRequest(BaseModel):
    """Optional body of `.../load` and `.../unload`, passed to the service as is."""

    parameters: Parameters = Field(default_factory=dict)


class RepositoryLoadResponse(BaseModel):
    """What a service answers once it has loaded a model: the state of each of its versions."""

    name: str
    versions: list[RepositoryEntry]


class RepositoryUnloadResponse(BaseModel):
    name: str
    state: ModelState


class ServingTraffic(BaseModel):
    """What the unversioned routes do now (a default or canary that is not ready is passed over)."""

    default_version: str | None
    canary: dict[str, Any] | None
    shadow: str | None


class TrafficState(BaseModel):
    name: str
    source: str = Field(description="defaults, model.json, or admin (a traffic call)")
    error: str | None = Field(default=None, description="Why the model.json on disk is not used")
    configured: Traffic
    serving: ServingTraffic
    versions: list[str]


class PredictRequest(BaseModel):
    """KServe v1 `:predict`: one row per instance, in the model's input layout."""

    instances: list[Any] = Field(min_length=1)


class PredictResponse(BaseModel):
    predictions: list[Any]


# Every model a fragment below refers to; `gateway.openapi` puts their schemas in `components.schemas`,
# bodies as FastAPI documents a request (validation mode), answers as it documents a response.
REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    InferenceRequest,
    RepositoryIndexRequest,
    RepositoryLoadRequest,
    PredictRequest,
    Traffic,
)
RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    ServerMetadata,
    ServerLive,
    ServerReady,
    ModelMetadata,
    ModelReady,
    InferenceResponse,
    RepositoryEntry,
    RepositoryLoadResponse,
    RepositoryUnloadResponse,
    TrafficState,
    PredictResponse,
    OipError,
    ErrorResponse,
)

_ERROR_REASONS = {
    400: "The body could not be read (JSON, or the binary tensor layout)",
    401: "Missing or unknown API key",
    403: "The key lacks the scope this call needs",
    404: "Unknown model or version",
    409: "Several services claim this model name",
    413: "Request body too large",
    415: "Unsupported content type",
    422: "The request is not valid for this model",
    429: "Rate limit exceeded; see Retry-After",
    502: "The service gave an invalid answer",
    503: "The service is down, or the model is not loaded",
    504: "The service did not answer in time",
}
# The errors a call that takes no body can answer, and one that does.
READ_ERRORS = (401, 403, 404, 409, 422, 429, 502, 503, 504)
WRITE_ERRORS = (400, 401, 403, 404, 409, 413, 415, 422, 429, 502, 503, 504)
# What any forwarded call can answer besides its own (merged into every service operation): the
# gateway's errors, and 400 for a body that is not even text (the service's parser refuses it).
GATEWAY_ERRORS = (400, 401, 403, 413, 429, 502, 503, 504)


def ref(model: type[BaseModel]) -> dict[str, str]:
    """A JSON Schema reference to `model` in the document's components."""
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def errors(*statuses: int, shape: type[BaseModel] = OipError) -> dict[int | str, dict[str, Any]]:
    """`responses` entries for these statuses, in `shape` (OIP on /v2, the common one elsewhere)."""
    return {
        status: {
            "description": _ERROR_REASONS[status],
            "content": {"application/json": {"schema": ref(shape)}},
        }
        for status in statuses
    }


def answer(
    model: type[BaseModel], description: str = "Success", *, array: bool = False
) -> dict[int | str, Any]:
    """`responses` entry for a 200 with a JSON body of `model` (or a list of them)."""
    schema: dict[str, Any] = {"type": "array", "items": ref(model)} if array else ref(model)
    return {200: {"description": description, "content": {"application/json": {"schema": schema}}}}


def json_body(model: type[BaseModel], *, required: bool = True) -> dict[str, Any]:
    """`openapi_extra` declaring a JSON request body of `model`."""
    return {"requestBody": {"required": required, "content": {"application/json": {"schema": ref(model)}}}}


_BINARY = {"schema": {"type": "string", "format": "binary"}}
_BINARY_NOTE = (
    "With the binary tensor extension the body is the JSON part, then the tensors' raw bytes "
    f"(little-endian, row-major); `{BINARY_HEADER}` gives the JSON part's length."
)
_BINARY_HEADER_DOC = "Bytes of JSON before the raw tensor data (binary tensor extension only)"

INFER_BODY: dict[str, Any] = {
    "parameters": [
        {
            "name": "Inference-Header-Content-Length",
            "in": "header",
            "required": False,
            "description": _BINARY_HEADER_DOC,
            "schema": {"type": "integer", "minimum": 0},
        }
    ],
    "requestBody": {
        "required": True,
        "description": _BINARY_NOTE,
        "content": {
            "application/json": {"schema": ref(InferenceRequest)},
            "application/octet-stream": _BINARY,
        },
    },
}

INFER_ANSWER: dict[int | str, Any] = {
    200: {
        "description": "The outputs. " + _BINARY_NOTE,
        "content": {
            "application/json": {"schema": ref(InferenceResponse)},
            "application/octet-stream": _BINARY,
        },
        "headers": {
            "Inference-Header-Content-Length": {
                "description": _BINARY_HEADER_DOC,
                "schema": {"type": "integer"},
            }
        },
    }
}
