"""The Open Inference Protocol's messages (KServe v2 REST), as pydantic models.

Used to document the protocol in OpenAPI and to build answers; request bodies are decoded by
`modelgate_core.oip.codec` (which also reads the binary tensor extension), not by FastAPI.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Datatype = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BF16",
    "BYTES",
]

Parameters = dict[str, Any]

# The binary tensor extension's header: how many bytes of the body are the JSON part.
HEADER_LENGTH_HEADER = "inference-header-content-length"


class TensorSpec(BaseModel):
    """A model input or output: name, datatype and shape (-1 for a variable dimension).

    `parameters` may say how JSON carries BYTES elements: `{"content_type": "str"}` (UTF-8 text, the
    default) or `{"content_type": "base64"}` (binary data such as an encoded image).
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=256)
    datatype: Datatype
    shape: list[int] = Field(description="-1 marks a variable dimension; the first is usually the batch.")
    parameters: Parameters = Field(default_factory=dict)

    def is_base64(self) -> bool:
        return self.datatype == "BYTES" and self.parameters.get("content_type") == "base64"


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    parameters: Parameters = Field(default_factory=dict)


class ModelReady(BaseModel):
    name: str
    ready: bool


class RequestInput(BaseModel):
    """One input tensor of an infer request (documentation; the codec decodes the real body)."""

    name: str
    shape: list[int]
    datatype: Datatype
    parameters: Parameters = Field(default_factory=dict)
    data: Any = Field(default=None, description="Row-major elements, flat or nested")


class RequestOutput(BaseModel):
    name: str
    parameters: Parameters = Field(default_factory=dict)


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: Parameters = Field(default_factory=dict)
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: Datatype
    parameters: Parameters = Field(default_factory=dict)
    data: Any = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters = Field(default_factory=dict)
    outputs: list[ResponseOutput]


ModelState = Literal["READY", "LOADING", "UNLOADING", "UNAVAILABLE"]


class RepositoryEntry(BaseModel):
    """One model version in a repository index (a folder that could not be read has no version)."""

    name: str
    version: str | None = None
    state: ModelState
    reason: str = ""


class OipError(BaseModel):
    """Every /v2 error: OIP's `error` message, plus ModelGate's code and request ID."""

    error: str
    code: str
    request_id: str | None = None
