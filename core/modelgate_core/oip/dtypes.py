"""OIP datatypes as numpy sees them: the array dtype of a decoded tensor and the wire size of one
element. Apart from `types` so that the protocol's messages (which the gateway documents) need no numpy."""

from __future__ import annotations

from typing import Any

import numpy as np

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
