"""The Open Inference Protocol's messages (KServe v2 REST), as pydantic models.

Used to document the protocol in OpenAPI and to build answers; request bodies are decoded by
`modelgate_core.oip.codec` (which also reads the binary tensor extension), not by FastAPI.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
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

# OIP datatype -> the numpy dtype a decoded tensor has. BYTES tensors are object arrays of `bytes`;
# BF16 (which numpy lacks) is decoded to float32 and encoded back by truncation.
NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BF16": np.dtype(np.float32),
    "BYTES": np.dtype(object),
}

# Bytes per element in the binary tensor extension (BYTES elements are length-prefixed instead).
ELEMENT_SIZES: dict[str, int] = {
    "BOOL": 1,
    "UINT8": 1,
    "UINT16": 2,
    "UINT32": 4,
    "UINT64": 8,
    "INT8": 1,
    "INT16": 2,
    "INT32": 4,
    "INT64": 8,
    "FP16": 2,
    "FP32": 4,
    "FP64": 8,
    "BF16": 2,
}

Parameters = dict[str, Any]


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
