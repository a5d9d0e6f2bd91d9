"""Decode OIP infer requests and encode infer responses, as JSON tensors or with the binary tensor extension.

A request body is either all JSON, or (with `Inference-Header-Content-Length`) a JSON header followed by
the raw bytes of the inputs that carry `parameters.binary_data_size`, in input order. Raw tensors are
little-endian and row-major; a BYTES element is a 4-byte little-endian length then its bytes; a BOOL is one
byte. Everything a client can get wrong becomes a `BadRequest` naming the tensor, what was expected and
what was given; nothing is allocated from a declared shape before its element count has been checked.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import struct
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import orjson

from modelgate_core.errors import BadRequest, ModelGateError
from modelgate_core.oip.dtypes import ELEMENT_SIZES, NUMPY_DTYPES
from modelgate_core.oip.types import HEADER_LENGTH_HEADER, TensorSpec

__all__ = ["DecodedRequest", "RequestedOutput", "decode_infer_request", "encode_infer_response"]


# ASCII digits only: `str.isdigit` and `\d` would also accept other scripts' digits, which `int` parses.
_HEADER_LENGTH = re.compile(r"[0-9]{1,19}")
_U32 = struct.Struct("<I")
_INTEGER_TYPES = frozenset({"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"})
_FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64", "BF16"})


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool  # resolved: per-output parameters.binary_data, else request-level binary_data_output
    parameters: dict[str, Any]  # the output's parameters, binary_data removed


@dataclass(frozen=True)
class DecodedRequest:
    id: str | None
    parameters: dict[str, Any]  # request-level parameters, binary_data_output removed
    inputs: dict[str, np.ndarray]  # by name, in request order, dtype per NUMPY_DTYPES, shaped as sent
    input_parameters: dict[str, dict[str, Any]]  # by input name, binary_data_size removed
    outputs: list[RequestedOutput] | None  # None: the client asked for no specific outputs
    binary_output_default: bool  # request-level parameters.binary_data_output

    def wants_binary(self, output_name: str) -> bool:
        """Whether `output_name` goes back as raw bytes: its own request if it has one, else the default."""
        for requested in self.outputs or ():
            if requested.name == output_name:
                return requested.binary
        return self.binary_output_default


# --- decoding ---------------------------------------------------------------------------------------------


def decode_infer_request(
    body: bytes,
    *,
    header_length: str | None,
    inputs: Sequence[TensorSpec],
    max_elements: int = 50_000_000,
) -> DecodedRequest:
    """Decode and check an infer request body against the model's declared `inputs`.

    `header_length` is the raw `Inference-Header-Content-Length` value (None: the whole body is JSON).
    Output names are not checked here: the caller knows the model's outputs.
    """
    header, tail = _split_body(body, header_length)
    document = _parse_json(header)

    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest(f"'id' must be a string, got {_kind(request_id)}")
    parameters = dict(_optional_object(document.get("parameters"), "'parameters'"))
    binary_output_default = _optional_bool(parameters.pop("binary_data_output", None), "binary_data_output")

    # The cheap structural checks come before any tensor is decoded.
    outputs = _decode_requested_outputs(document.get("outputs"), binary_output_default)
    decoded, input_parameters = _decode_inputs(document, tail, header_length, inputs, max_elements)
    return DecodedRequest(
        id=request_id,
        parameters=parameters,
        inputs=decoded,
        input_parameters=input_parameters,
        outputs=outputs,
        binary_output_default=binary_output_default,
    )


def _split_body(body: bytes, header_length: str | None) -> tuple[memoryview, memoryview]:
    view = memoryview(body)
    if header_length is None:
        return view, view[len(view) :]
    text = header_length.strip()
    if not _HEADER_LENGTH.fullmatch(text):
        raise BadRequest(
            f"Inference-Header-Content-Length must be a non-negative integer, got {header_length[:40]!r}"
        )
    length = int(text)
    if length > len(view):
        raise BadRequest(
            f"Inference-Header-Content-Length is {length} but the body has only {len(view)} bytes"
        )
    return view[:length], view[length:]


def _parse_json(header: memoryview) -> dict[str, Any]:
    try:
        document = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The inference request is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise BadRequest(f"The inference request must be a JSON object, got {_kind(document)}")
    return document


class _BinaryTail:
    """The raw bytes after the JSON header, handed out to the binary inputs in order."""

    def __init__(self, tail: memoryview, header_length: str | None) -> None:
        self._tail = tail
        self._offset = 0
        self._header_length = header_length

    def take(self, size: int, name: str) -> memoryview:
        left = len(self._tail) - self._offset
        if size > left:
            hint = "" if self._header_length is not None else " (no Inference-Header-Content-Length was sent)"
            raise BadRequest(
                f"Input '{name}' says binary_data_size {size} but only {left} bytes of binary data "
                f"are left{hint}"
            )
        chunk = self._tail[self._offset : self._offset + size]
        self._offset += size
        return chunk

    def check_used_up(self) -> None:
        left = len(self._tail) - self._offset
        if left:
            raise BadRequest(
                f"{left} bytes of binary data follow the JSON header that no input's binary_data_size "
                "accounts for"
            )


def _decode_inputs(
    document: dict[str, Any],
    tail: memoryview,
    header_length: str | None,
    specs: Sequence[TensorSpec],
    max_elements: int,
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list):
        raise BadRequest(f"'inputs' must be a list of tensors, got {_kind(raw_inputs)}")
    by_name = {spec.name: spec for spec in specs}
    binary = _BinaryTail(tail, header_length)
    decoded: dict[str, np.ndarray] = {}
    input_parameters: dict[str, dict[str, Any]] = {}
    for position, raw in enumerate(raw_inputs):
        if not isinstance(raw, dict):
            raise BadRequest(f"inputs[{position}] must be a JSON object, got {_kind(raw)}")
        name, datatype, shape, parameters = _tensor_header(raw, position)
        spec = by_name.get(name)
        if spec is None:
            raise BadRequest(f"Unknown input '{name}': the model's inputs are {_names(specs)}")
        if name in decoded:
            raise BadRequest(f"Input '{name}' is given more than once")
        _check_against_spec(name, datatype, shape, spec)
        count = math.prod(shape)
        if count > max_elements:
            raise BadRequest(
                f"Input '{name}' has shape {shape}: {count} elements, over the limit of {max_elements}"
            )
        size = parameters.pop("binary_data_size", None)
        if size is not None:
            if raw.get("data") is not None:
                raise BadRequest(f"Input '{name}' has both 'data' and parameters.binary_data_size; send one")
            if not _is_int(size) or size < 0:
                raise BadRequest(
                    f"Input '{name}': parameters.binary_data_size must be a non-negative integer, "
                    f"got {_short(size)}"
                )
            array = _decode_binary(name, datatype, shape, count, binary.take(size, name))
        elif "data" in raw:
            base64_elements = spec.is_base64() or parameters.get("content_type") == "base64"
            array = _decode_json_data(name, datatype, shape, count, raw["data"], base64_elements)
        else:
            raise BadRequest(f"Input '{name}' has neither 'data' nor parameters.binary_data_size")
        decoded[name] = array
        input_parameters[name] = parameters
    binary.check_used_up()
    missing = [spec.name for spec in specs if spec.name not in decoded]
    if missing:
        raise BadRequest(
            f"Missing input(s) {', '.join(repr(n) for n in missing)}: the model needs {_names(specs)}"
        )
    return decoded, input_parameters


def _tensor_header(raw: dict[str, Any], position: int) -> tuple[str, str, list[int], dict[str, Any]]:
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest(f"inputs[{position}].name must be a non-empty string, got {_kind(name)}")
    datatype = raw.get("datatype")
    if not isinstance(datatype, str) or datatype not in NUMPY_DTYPES:
        shown = repr(datatype) if isinstance(datatype, str) else _kind(datatype)
        raise BadRequest(
            f"Input '{name}': datatype must be one of {', '.join(NUMPY_DTYPES)}, got {shown[:40]}"
        )
    shape = raw.get("shape")
    if not isinstance(shape, list) or not all(_is_int(dim) and dim >= 0 for dim in shape):
        raise BadRequest(
            f"Input '{name}': shape must be a list of non-negative integers, got {_short(shape)}"
        )
    parameters = dict(_optional_object(raw.get("parameters"), f"Input '{name}': parameters"))
    return name, datatype, shape, parameters


def _check_against_spec(name: str, datatype: str, shape: list[int], spec: TensorSpec) -> None:
    if datatype != spec.datatype:
        raise BadRequest(f"Input '{name}': datatype {datatype} given, the model expects {spec.datatype}")
    fits = len(shape) == len(spec.shape) and all(
        want == -1 or want == got for want, got in zip(spec.shape, shape, strict=True)
    )
    if not fits:
        raise BadRequest(
            f"Input '{name}': shape {_short(shape)} given, the model expects {spec.shape} (-1: any size)"
        )


def _decode_binary(name: str, datatype: str, shape: list[int], count: int, chunk: memoryview) -> np.ndarray:
    if datatype == "BYTES":
        return _object_array(_split_bytes_elements(name, count, chunk), shape)
    needed = count * ELEMENT_SIZES[datatype]
    if len(chunk) != needed:
        raise BadRequest(
            f"Input '{name}': binary_data_size is {len(chunk)} bytes, but shape {shape} of {datatype} "
            f"needs {needed}"
        )
    if datatype == "BF16":
        # A BF16 value is the high half of a float32's bits.
        halves = np.frombuffer(chunk, dtype="<u2")
        return (halves.astype(np.uint32) << 16).view(np.float32).reshape(shape)
    if datatype == "BOOL":
        raw = np.frombuffer(chunk, dtype=np.uint8)
        if count and raw.max() > 1:
            position = int(np.argmax(raw > 1))
            raise BadRequest(
                f"Input '{name}': BOOL bytes must be 0 or 1, got {int(raw[position])} at element {position}"
            )
        return raw.astype(np.bool_).reshape(shape)
    # astype copies into native byte order: the result is writable, unlike a view of the request body.
    wire = NUMPY_DTYPES[datatype].newbyteorder("<")
    return np.frombuffer(chunk, dtype=wire).astype(NUMPY_DTYPES[datatype]).reshape(shape)


def _split_bytes_elements(name: str, count: int, chunk: memoryview) -> list[bytes]:
    end = len(chunk)
    if end < 4 * count:
        raise BadRequest(
            f"Input '{name}': {count} BYTES elements need at least {4 * count} bytes, "
            f"binary_data_size is {end}"
        )
    elements: list[bytes] = []
    offset = 0
    for index in range(count):
        if offset + 4 > end:
            raise BadRequest(f"Input '{name}': binary data ends inside the length of BYTES element {index}")
        (length,) = _U32.unpack_from(chunk, offset)
        offset += 4
        if offset + length > end:
            raise BadRequest(
                f"Input '{name}': BYTES element {index} says {length} bytes but only {end - offset} are left"
            )
        elements.append(bytes(chunk[offset : offset + length]))
        offset += length
    if offset != end:
        raise BadRequest(
            f"Input '{name}': {end - offset} bytes are left after the {count} BYTES elements its shape needs"
        )
    return elements


def _decode_json_data(
    name: str, datatype: str, shape: list[int], count: int, data: Any, base64_elements: bool
) -> np.ndarray:
    flat, kinds = _flatten(name, shape, count, data)
    if datatype == "BYTES":
        return _object_array(_json_bytes_elements(name, flat, kinds, base64_elements), shape)
    if datatype == "BOOL":
        _require_kinds(name, datatype, flat, kinds, {bool}, "true or false")
        return np.array(flat, dtype=np.bool_).reshape(shape)
    target = NUMPY_DTYPES[datatype]
    if datatype in _INTEGER_TYPES:
        _require_kinds(name, datatype, flat, kinds, {int}, "integers")
        try:
            return np.array(flat, dtype=target).reshape(shape)
        except OverflowError as exc:
            info = np.iinfo(target)
            bad = next(value for value in flat if not info.min <= value <= info.max)
            raise BadRequest(
                f"Input '{name}': {bad} is out of range for {datatype} ({info.min} to {info.max})"
            ) from exc
    _require_kinds(name, datatype, flat, kinds, {int, float}, "numbers")
    try:
        with np.errstate(over="ignore"):
            array = np.array(flat, dtype=target)
    except OverflowError as exc:
        raise BadRequest(f"Input '{name}': a value is out of range for {datatype}") from exc
    # JSON cannot spell inf or nan, so a non-finite value here is one too large for the dtype.
    if not np.isfinite(array).all():
        position = int(np.argmin(np.isfinite(array)))
        raise BadRequest(f"Input '{name}': {flat[position]} is out of range for {datatype}")
    return array.reshape(shape)


def _flatten(name: str, shape: list[int], count: int, data: Any) -> tuple[list[Any], set[type]]:
    """The elements of flat or nested `data`, row-major, and their types.

    Nested data must be rectangular and match `shape`. The checks run over whole lists at C speed
    (`map(type, ...)`, `chain`), never one Python step per element.
    """
    if not isinstance(data, list):
        raise BadRequest(f"Input '{name}': data must be a list, got {_kind(data)}")
    kinds = set(map(type, data))
    if list not in kinds:
        if len(data) != count:
            raise BadRequest(f"Input '{name}': data has {len(data)} elements, shape {shape} needs {count}")
        return data, kinds
    if len(shape) < 2:
        raise BadRequest(f"Input '{name}': data is nested, but shape {shape} has fewer than 2 dimensions")
    if len(data) != shape[0]:
        raise BadRequest(f"Input '{name}': nested data has {len(data)} rows, shape {shape} needs {shape[0]}")
    level: list[Any] = data
    for depth, width in enumerate(shape[1:], start=1):
        if set(map(type, level)) != {list} and level:
            raise BadRequest(
                f"Input '{name}': nested data is not rectangular: a list is expected at every position "
                f"of depth {depth} for shape {shape}"
            )
        widths = set(map(len, level))
        if widths and widths != {width}:
            wrong = min(widths - {width})
            raise BadRequest(
                f"Input '{name}': nested data has a list of {wrong} elements at depth {depth}, "
                f"shape {shape} needs {width}"
            )
        level = list(chain.from_iterable(level))
    return level, set(map(type, level))


def _require_kinds(
    name: str, datatype: str, flat: list[Any], kinds: set[type], allowed: set[type], expected: str
) -> None:
    # bool is a subclass of int, so the check is on exact types: `true` in an INT32 tensor is refused.
    if kinds <= allowed:
        return
    bad = next(value for value in flat if type(value) not in allowed)
    raise BadRequest(f"Input '{name}': {datatype} data must be {expected}, got {_kind(bad)} ({_short(bad)})")


def _json_bytes_elements(name: str, flat: list[Any], kinds: set[type], base64_elements: bool) -> list[bytes]:
    _require_kinds(name, "BYTES", flat, kinds, {str}, "strings")
    if not base64_elements:
        # orjson refuses lone surrogates, so every decoded JSON string encodes to UTF-8.
        return [value.encode() for value in flat]
    elements: list[bytes] = []
    for index, value in enumerate(flat):
        try:
            elements.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise BadRequest(f"Input '{name}': BYTES element {index} is not valid base64") from exc
    return elements


def _object_array(elements: list[bytes], shape: list[int]) -> np.ndarray:
    # Filling a preallocated object array keeps numpy from treating the bytes as sequences.
    array = np.empty(len(elements), dtype=object)
    array[:] = elements
    return array.reshape(shape)


def _decode_requested_outputs(raw_outputs: Any, binary_default: bool) -> list[RequestedOutput] | None:
    if raw_outputs is None:
        return None
    if not isinstance(raw_outputs, list):
        raise BadRequest(f"'outputs' must be a list of {{name, parameters?}}, got {_kind(raw_outputs)}")
    requested: list[RequestedOutput] = []
    seen: set[str] = set()
    for position, raw in enumerate(raw_outputs):
        if not isinstance(raw, dict):
            raise BadRequest(f"outputs[{position}] must be a JSON object, got {_kind(raw)}")
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest(f"outputs[{position}].name must be a non-empty string, got {_kind(name)}")
        if name in seen:
            raise BadRequest(f"Output '{name}' is requested more than once")
        seen.add(name)
        parameters = dict(_optional_object(raw.get("parameters"), f"Output '{name}': parameters"))
        own = parameters.pop("binary_data", None)
        binary = binary_default if own is None else _optional_bool(own, f"Output '{name}': binary_data")
        requested.append(RequestedOutput(name=name, binary=binary, parameters=parameters))
    return requested


def _optional_object(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{where} must be a JSON object, got {_kind(value)}")
    return value


def _optional_bool(value: Any, where: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest(f"{where} must be true or false, got {_kind(value)}")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    """How a JSON value reads in an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a non-integer number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _names(specs: Sequence[TensorSpec]) -> str:
    return ", ".join(repr(spec.name) for spec in specs) or "none"


# --- encoding ---------------------------------------------------------------------------------------------


def encode_infer_response(
    *,
    model_name: str,
    model_version: str | None,
    request_id: str | None,
    outputs: Sequence[tuple[TensorSpec, np.ndarray]],
    binary: Collection[str],
    parameters: Mapping[str, Any] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Serialise an infer response; outputs named in `binary` travel as raw bytes after the JSON header.

    Returns the body and the headers that must go with it (content-type, and the header length when any
    output is binary). An output array whose dtype cannot become its spec's datatype is a model bug, so it
    is a `ModelGateError` (500), not the client's fault.
    """
    binary_names = set(binary)
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    any_binary = False
    for spec, array in outputs:
        converted = _to_spec_dtype(spec, array)
        entry: dict[str, Any] = {"name": spec.name, "datatype": spec.datatype, "shape": list(converted.shape)}
        if spec.name in binary_names:
            raw = _binary_bytes(spec, converted)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
            any_binary = True
        else:
            data, output_parameters = _json_data(spec, converted)
            if output_parameters:
                entry["parameters"] = output_parameters
            entry["data"] = data
        entries.append(entry)

    document: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "id": request_id}
    if parameters:
        document["parameters"] = dict(parameters)
    document["outputs"] = entries
    try:
        header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    except orjson.JSONEncodeError as exc:
        raise ModelGateError(f"The inference response cannot be serialised: {exc}") from exc
    if not any_binary:
        return header, {"content-type": "application/json"}
    headers = {HEADER_LENGTH_HEADER: str(len(header)), "content-type": "application/octet-stream"}
    return b"".join([header, *chunks]), headers


def _to_spec_dtype(spec: TensorSpec, array: Any) -> np.ndarray:
    values = np.asarray(array)
    if spec.datatype == "BYTES":
        return _object_array(_bytes_output_elements(spec.name, values), list(values.shape))
    target = NUMPY_DTYPES[spec.datatype]
    if values.dtype == target:
        return values
    source = values.dtype.kind
    if spec.datatype == "BOOL":
        compatible = source == "b"
    elif spec.datatype in _INTEGER_TYPES:
        compatible = source in "biu"
    else:
        compatible = source in "biuf"
    if not compatible:
        raise ModelGateError(
            f"Output '{spec.name}' has dtype {values.dtype}, which cannot become {spec.datatype}"
        )
    if source in "iu" and target.kind in "iu" and values.size and not np.can_cast(values.dtype, target):
        info = np.iinfo(target)
        low, high = int(values.min()), int(values.max())
        if low < info.min or high > info.max:
            raise ModelGateError(
                f"Output '{spec.name}' has values from {low} to {high}, out of range for {spec.datatype}"
            )
    with np.errstate(over="ignore"):
        return values.astype(target)


def _bytes_output_elements(name: str, values: np.ndarray) -> list[bytes]:
    if values.dtype.kind not in "OSU":
        raise ModelGateError(f"Output '{name}' has dtype {values.dtype}, which cannot become BYTES")
    elements: list[bytes] = []
    for item in values.reshape(-1).tolist():
        if isinstance(item, bytes):
            elements.append(item)
        elif isinstance(item, str):
            try:
                elements.append(item.encode())
            except UnicodeEncodeError as exc:
                raise ModelGateError(f"Output '{name}' holds a string that is not valid Unicode") from exc
        else:
            raise ModelGateError(
                f"Output '{name}' holds a {type(item).__name__}; BYTES elements must be bytes or str"
            )
    return elements


def _bf16_bits(values: np.ndarray) -> np.ndarray:
    """The float32 bits with the low half cleared: BF16 by truncation, still laid out as float32."""
    bits: np.ndarray = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    return bits & np.uint32(0xFFFF0000)


def _binary_bytes(spec: TensorSpec, values: np.ndarray) -> bytes:
    if spec.datatype == "BYTES":
        elements: list[bytes] = values.reshape(-1).tolist()
        return b"".join(chain.from_iterable((_U32.pack(len(item)), item) for item in elements))
    if spec.datatype == "BF16":
        return (_bf16_bits(values) >> 16).astype("<u2").tobytes()
    wire = NUMPY_DTYPES[spec.datatype].newbyteorder("<")
    return values.astype(wire, copy=False).tobytes(order="C")


def _json_data(spec: TensorSpec, values: np.ndarray) -> tuple[Any, dict[str, Any]]:
    """The flat `data` of one JSON output, and the parameters that say how to read it."""
    if spec.datatype == "BYTES":
        elements: list[bytes] = values.reshape(-1).tolist()
        if not spec.is_base64():
            try:
                return [item.decode() for item in elements], {}
            except UnicodeDecodeError:
                pass
        return [base64.b64encode(item).decode("ascii") for item in elements], {"content_type": "base64"}
    if spec.datatype == "BF16":
        values = _bf16_bits(values).view(np.float32)
    # orjson serialises a C-contiguous numpy array natively: no Python loop over the elements.
    return np.ascontiguousarray(values.reshape(-1)), {}
