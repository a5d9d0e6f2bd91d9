"""The OIP tensor codec against the real tritonclient: JSON and binary tensors, both ways, and refusals."""

from __future__ import annotations

import base64
import struct
from typing import Any

import ml_dtypes
import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient

from modelgate_core.errors import BadRequest, ModelGateError
from modelgate_core.oip.codec import (
    DecodedRequest,
    RequestedOutput,
    decode_infer_request,
    encode_infer_response,
)
from modelgate_core.oip.dtypes import NUMPY_DTYPES
from modelgate_core.oip.types import TensorSpec

# One (2, 3) tensor per datatype, reaching each type's extremes.
SAMPLES: dict[str, np.ndarray] = {
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "UINT8": np.array([[0, 1, 2], [253, 254, 255]], dtype=np.uint8),
    "UINT16": np.array([[0, 1, 2], [65533, 65534, 65535]], dtype=np.uint16),
    "UINT32": np.array([[0, 1, 2], [2**32 - 3, 2**32 - 2, 2**32 - 1]], dtype=np.uint32),
    "UINT64": np.array([[0, 1, 2], [2**64 - 3, 2**64 - 2, 2**64 - 1]], dtype=np.uint64),
    "INT8": np.array([[-128, -1, 0], [1, 2, 127]], dtype=np.int8),
    "INT16": np.array([[-(2**15), -1, 0], [1, 2, 2**15 - 1]], dtype=np.int16),
    "INT32": np.array([[-(2**31), -1, 0], [1, 2, 2**31 - 1]], dtype=np.int32),
    "INT64": np.array([[-(2**63), -1, 0], [1, 2, 2**63 - 1]], dtype=np.int64),
    "FP16": np.array([[-65504, -1.5, 0], [0.25, 1.0009765625, 65504]], dtype=np.float16),
    "FP32": np.array([[-3.4e38, -1.1, 0], [1e-30, 0.1, 3.4e38]], dtype=np.float32),
    "FP64": np.array([[-1.7e308, -1.1, 0], [5e-324, 0.1, 1.7e308]], dtype=np.float64),
    # Values BF16 holds exactly, so every path must give them back unchanged.
    "BF16": np.array([[-1.5, 0, 1], [2.5, 3.3895313892515355e38, -0.0078125]], dtype=np.float32),
    "BYTES": np.array([[b"", b"a", "h\u00e9llo".encode()], [b"tab\there", b"{}", b"x" * 300]], dtype=object),
}
DATATYPES = list(SAMPLES)
# tritonclient refuses BF16 as JSON, so JSON BF16 requests are built by hand below.
JSON_CLIENT_DATATYPES = [dt for dt in DATATYPES if dt != "BF16"]


def spec(name: str, datatype: str, shape: list[int], **parameters: Any) -> TensorSpec:
    return TensorSpec.model_validate(
        {"name": name, "datatype": datatype, "shape": shape, "parameters": parameters}
    )


def client_array(datatype: str, values: np.ndarray) -> np.ndarray:
    """The array as tritonclient wants it: BF16 as ml_dtypes.bfloat16."""
    return values.astype(ml_dtypes.bfloat16) if datatype == "BF16" else values


def triton_request(
    inputs: list[httpclient.InferInput],
    outputs: list[httpclient.InferRequestedOutput] | None = None,
    **kwargs: Any,
) -> tuple[bytes, str | None]:
    body, json_size = httpclient.InferenceServerClient.generate_request_body(
        inputs, outputs=outputs, **kwargs
    )
    return body, None if json_size is None else str(json_size)


def triton_input(name: str, datatype: str, values: np.ndarray, *, binary: bool) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, list(values.shape), datatype)
    tensor.set_data_from_numpy(client_array(datatype, values), binary_data=binary)
    return tensor


def parse_response(body: bytes, headers: dict[str, str]) -> httpclient.InferResult:
    length = headers.get("inference-header-content-length")
    return httpclient.InferResult.from_response_body(
        body, header_length=None if length is None else int(length)
    )


def assert_same_tensor(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    if want.dtype == object:
        assert got.tolist() == want.tolist()
    else:
        np.testing.assert_array_equal(got, want, strict=True)


def json_request(*tensors: dict[str, Any], **fields: Any) -> bytes:
    return orjson.dumps({"inputs": list(tensors), **fields})


def binary_request(document: dict[str, Any], *chunks: bytes) -> tuple[bytes, str]:
    header = orjson.dumps(document)
    return header + b"".join(chunks), str(len(header))


def refusal(body: bytes, specs: list[TensorSpec], header_length: str | None = None, **kwargs: Any) -> str:
    with pytest.raises(BadRequest) as caught:
        decode_infer_request(body, header_length=header_length, inputs=specs, **kwargs)
    assert caught.value.status_code == 400
    return caught.value.message


# --- requests: every datatype from the real client ----------------------------------------------------------


@pytest.mark.parametrize("datatype", DATATYPES)
def test_decodes_every_datatype_sent_binary_by_tritonclient(datatype: str) -> None:
    body, header_length = triton_request([triton_input("x", datatype, SAMPLES[datatype], binary=True)])
    assert header_length is not None

    decoded = decode_infer_request(body, header_length=header_length, inputs=[spec("x", datatype, [-1, 3])])

    array = decoded.inputs["x"]
    assert array.dtype == NUMPY_DTYPES[datatype]
    assert_same_tensor(array, SAMPLES[datatype])
    assert decoded.input_parameters == {"x": {}}


@pytest.mark.parametrize("datatype", JSON_CLIENT_DATATYPES)
def test_decodes_every_datatype_sent_as_json_by_tritonclient(datatype: str) -> None:
    body, header_length = triton_request([triton_input("x", datatype, SAMPLES[datatype], binary=False)])
    assert header_length is None

    decoded = decode_infer_request(body, header_length=None, inputs=[spec("x", datatype, [2, 3])])

    assert decoded.inputs["x"].dtype == NUMPY_DTYPES[datatype]
    assert_same_tensor(decoded.inputs["x"], SAMPLES[datatype])


def test_bf16_json_numbers_are_taken_as_float32_without_truncation() -> None:
    body = json_request({"name": "x", "datatype": "BF16", "shape": [1, 2], "data": [1.1, -3]})

    decoded = decode_infer_request(body, header_length=None, inputs=[spec("x", "BF16", [-1, 2])])

    assert_same_tensor(decoded.inputs["x"], np.array([[1.1, -3.0]], dtype=np.float32))


def test_nested_json_data_is_read_row_major() -> None:
    body = json_request(
        {"name": "x", "datatype": "INT32", "shape": [2, 2, 2], "data": [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]}
    )

    decoded = decode_infer_request(body, header_length=None, inputs=[spec("x", "INT32", [-1, 2, 2])])

    assert_same_tensor(decoded.inputs["x"], np.arange(1, 9, dtype=np.int32).reshape(2, 2, 2))


def test_variable_dimensions_accept_any_size_including_zero() -> None:
    body = json_request(
        {"name": "a", "datatype": "FP64", "shape": [5, 1], "data": [1, 2, 3, 4, 5]},
        {"name": "b", "datatype": "FP64", "shape": [0, 3], "data": []},
    )
    specs = [spec("a", "FP64", [-1, 1]), spec("b", "FP64", [-1, 3])]

    decoded = decode_infer_request(body, header_length=None, inputs=specs)

    assert_same_tensor(decoded.inputs["a"], np.arange(1.0, 6.0).reshape(5, 1))
    assert decoded.inputs["b"].shape == (0, 3)


def test_mixed_json_and_binary_inputs_take_their_bytes_in_order() -> None:
    ints = np.array([[7, -8]], dtype=np.int64)
    texts = np.array([b"\x00\xffraw", b"more"], dtype=object)
    floats = np.array([0.5, 1.5, 2.5], dtype=np.float32)
    inputs = [
        triton_input("ints", "INT64", ints, binary=True),
        triton_input("floats", "FP32", floats, binary=False),
        triton_input("texts", "BYTES", texts, binary=True),
    ]
    body, header_length = triton_request(inputs, request_id="req-7", parameters={"temperature": 0.5})
    specs = [spec("texts", "BYTES", [-1]), spec("ints", "INT64", [1, 2]), spec("floats", "FP32", [3])]

    decoded = decode_infer_request(body, header_length=header_length, inputs=specs)

    assert list(decoded.inputs) == ["ints", "floats", "texts"]
    assert_same_tensor(decoded.inputs["ints"], ints)
    assert_same_tensor(decoded.inputs["floats"], floats)
    assert_same_tensor(decoded.inputs["texts"], texts)
    assert decoded.id == "req-7"
    # tritonclient asks for binary outputs when no outputs are named; that is the default, not a parameter.
    assert decoded.parameters == {"temperature": 0.5}
    assert decoded.binary_output_default is True
    assert decoded.outputs is None


def test_binary_inputs_are_writable_native_arrays() -> None:
    values = np.array([1.0, 2.0], dtype=np.float64)
    body, header_length = triton_request([triton_input("x", "FP64", values, binary=True)])

    array = decode_infer_request(body, header_length=header_length, inputs=[spec("x", "FP64", [2])]).inputs[
        "x"
    ]

    array *= 2  # a read-only view of the body would raise here
    assert_same_tensor(array, np.array([2.0, 4.0]))


def test_requested_outputs_resolve_binary_per_output_then_request_default() -> None:
    tensor = triton_input("x", "FP32", np.zeros(2, dtype=np.float32), binary=False)
    outputs = [
        httpclient.InferRequestedOutput("probabilities", binary_data=True, class_count=3),
        httpclient.InferRequestedOutput("label", binary_data=False),
    ]
    body, header_length = triton_request([tensor], outputs)

    decoded = decode_infer_request(body, header_length=header_length, inputs=[spec("x", "FP32", [2])])

    assert decoded.outputs == [
        RequestedOutput(name="probabilities", binary=True, parameters={"classification": 3}),
        RequestedOutput(name="label", binary=False, parameters={}),
    ]
    assert decoded.binary_output_default is False
    assert decoded.wants_binary("probabilities") is True
    assert decoded.wants_binary("label") is False
    assert decoded.wants_binary("unnamed") is False


def test_request_level_binary_default_applies_to_outputs_without_their_own_flag() -> None:
    body = json_request(
        {"name": "x", "datatype": "FP32", "shape": [1], "data": [1]},
        parameters={"binary_data_output": True, "trace": "on"},
        outputs=[{"name": "y"}, {"name": "z", "parameters": {"binary_data": False}}],
    )

    decoded = decode_infer_request(body, header_length=None, inputs=[spec("x", "FP32", [1])])

    assert isinstance(decoded, DecodedRequest)
    assert decoded.parameters == {"trace": "on"}
    assert decoded.outputs == [
        RequestedOutput(name="y", binary=True, parameters={}),
        RequestedOutput(name="z", binary=False, parameters={}),
    ]


@pytest.mark.parametrize(
    ("spec_parameters", "input_parameters"),
    [({"content_type": "base64"}, {}), ({}, {"content_type": "base64"})],
    ids=["declared-by-the-model", "declared-by-the-request"],
)
def test_bytes_json_elements_are_base64_decoded_when_declared(
    spec_parameters: dict[str, Any], input_parameters: dict[str, Any]
) -> None:
    payload = [b"\x89PNG\x00\xff", b""]
    body = json_request(
        {
            "name": "image",
            "datatype": "BYTES",
            "shape": [2],
            "parameters": input_parameters,
            "data": [base64.b64encode(item).decode() for item in payload],
        }
    )

    decoded = decode_infer_request(
        body, header_length=None, inputs=[spec("image", "BYTES", [-1], **spec_parameters)]
    )

    assert decoded.inputs["image"].tolist() == payload
    assert decoded.input_parameters["image"] == input_parameters


def test_bytes_json_elements_are_utf8_by_default() -> None:
    body = json_request({"name": "text", "datatype": "BYTES", "shape": [1], "data": ["aGk="]})

    decoded = decode_infer_request(body, header_length=None, inputs=[spec("text", "BYTES", [1])])

    assert decoded.inputs["text"].tolist() == [b"aGk="]


# --- responses: every datatype read back by the real client ------------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", DATATYPES)
def test_every_datatype_encodes_so_tritonclient_reads_it_back(datatype: str, binary: bool) -> None:
    values = SAMPLES[datatype]

    body, headers = encode_infer_response(
        model_name="m",
        model_version="3",
        request_id="r1",
        outputs=[(spec("y", datatype, [-1, 3]), values)],
        binary={"y"} if binary else set(),
    )

    result = parse_response(body, headers)
    got = result.as_numpy("y")
    if datatype == "BF16":
        assert got.dtype == ml_dtypes.bfloat16
        got = got.astype(np.float32)
    if datatype == "BYTES" and not binary:
        # JSON carries text: tritonclient hands it back as str.
        values = np.vectorize(bytes.decode, otypes=[object])(values)
    assert_same_tensor(got, values)
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == ("m", "3", "r1")
    if binary:
        assert headers["content-type"] == "application/octet-stream"
        assert result.get_output("y")["parameters"]["binary_data_size"] == len(body) - int(
            headers["inference-header-content-length"]
        )
    else:
        assert headers == {"content-type": "application/json"}
        assert "parameters" not in result.get_output("y")


def test_binary_and_json_outputs_mix_in_one_response() -> None:
    scores = np.array([[0.25, 0.75]], dtype=np.float32)
    labels = np.array([b"cat"], dtype=object)
    counts = np.array([3, 4], dtype=np.int64)

    body, headers = encode_infer_response(
        model_name="m",
        model_version=None,
        request_id=None,
        outputs=[
            (spec("scores", "FP32", [-1, 2]), scores),
            (spec("labels", "BYTES", [-1]), labels),
            (spec("counts", "INT64", [-1]), counts),
        ],
        binary={"scores", "counts"},
        parameters={"took_ms": 2},
    )

    result = parse_response(body, headers)
    assert_same_tensor(result.as_numpy("scores"), scores)
    assert result.as_numpy("labels").tolist() == ["cat"]
    assert_same_tensor(result.as_numpy("counts"), counts)
    response = result.get_response()
    assert response["parameters"] == {"took_ms": 2}
    assert response["model_version"] is None and response["id"] is None


def test_bf16_outputs_are_truncated_not_rounded() -> None:
    # float32 1.1 is 0x3F8CCCCD: truncation keeps 0x3F8C (1.09375); rounding would give 0x3F8D.
    values = np.array([1.1], dtype=np.float32)
    for binary in (set(), {"y"}):
        body, headers = encode_infer_response(
            model_name="m",
            model_version=None,
            request_id=None,
            outputs=[(spec("y", "BF16", [1]), values)],
            binary=binary,
        )
        assert parse_response(body, headers).as_numpy("y").astype(np.float32).tolist() == [1.09375]


def test_compatible_output_dtypes_are_converted_to_the_declared_datatype() -> None:
    body, headers = encode_infer_response(
        model_name="m",
        model_version=None,
        request_id=None,
        outputs=[
            (spec("ids", "INT64", [-1]), np.array([1, 2], dtype=np.int32)),
            (spec("names", "BYTES", [-1]), np.array(["caf\u00e9", "tea"])),
            (spec("scores", "FP32", [-1]), np.array([0.5, 0.25], dtype=np.float64)),
            (spec("small", "UINT8", [-1]), np.array([0, 255], dtype=np.int64)),
        ],
        binary={"ids", "names", "scores", "small"},
    )

    result = parse_response(body, headers)
    assert_same_tensor(result.as_numpy("ids"), np.array([1, 2], dtype=np.int64))
    assert result.as_numpy("names").tolist() == ["caf\u00e9".encode(), b"tea"]
    assert_same_tensor(result.as_numpy("scores"), np.array([0.5, 0.25], dtype=np.float32))
    assert_same_tensor(result.as_numpy("small"), np.array([0, 255], dtype=np.uint8))


def test_response_shape_is_the_arrays_real_shape() -> None:
    body, headers = encode_infer_response(
        model_name="m",
        model_version=None,
        request_id=None,
        outputs=[(spec("y", "FP64", [-1, -1]), np.arange(12.0).reshape(3, 4).T)],
        binary=set(),
    )

    output = parse_response(body, headers).get_output("y")
    assert output["shape"] == [4, 3]
    assert output["data"] == np.arange(12.0).reshape(3, 4).T.reshape(-1).tolist()


def test_bytes_json_outputs_fall_back_to_base64_when_not_utf8() -> None:
    body, headers = encode_infer_response(
        model_name="m",
        model_version=None,
        request_id=None,
        outputs=[
            (spec("blob", "BYTES", [-1]), np.array([b"\xff\xfe", b"ok"], dtype=object)),
            (spec("image", "BYTES", [-1], content_type="base64"), np.array([b"ok"], dtype=object)),
            (spec("text", "BYTES", [-1]), np.array([b"ok"], dtype=object)),
        ],
        binary=set(),
    )

    result = parse_response(body, headers)
    assert result.get_output("blob")["parameters"] == {"content_type": "base64"}
    assert result.get_output("blob")["data"] == [base64.b64encode(b"\xff\xfe").decode(), "b2s="]
    assert result.get_output("image")["data"] == ["b2s="]
    assert result.get_output("text")["data"] == ["ok"]
    assert "parameters" not in result.get_output("text")


def test_large_numeric_outputs_serialise_exactly() -> None:
    values = np.random.default_rng(0).standard_normal(200_000).astype(np.float32)

    body, headers = encode_infer_response(
        model_name="m",
        model_version=None,
        request_id=None,
        outputs=[(spec("y", "FP32", [-1]), values)],
        binary=set(),
    )

    assert_same_tensor(parse_response(body, headers).as_numpy("y"), values)


@pytest.mark.parametrize(
    ("datatype", "values", "fragment"),
    [
        ("INT64", np.array([1.5]), "dtype float64, which cannot become INT64"),
        ("BOOL", np.array([0, 1]), "cannot become BOOL"),
        ("UINT8", np.array([300]), "out of range for UINT8"),
        ("BYTES", np.array([1, 2]), "cannot become BYTES"),
        ("BYTES", np.array([b"a", 3], dtype=object), "holds a int"),
    ],
)
def test_outputs_that_cannot_become_their_datatype_are_a_server_error(
    datatype: str, values: np.ndarray, fragment: str
) -> None:
    with pytest.raises(ModelGateError, match=fragment) as caught:
        encode_infer_response(
            model_name="m",
            model_version=None,
            request_id=None,
            outputs=[(spec("y", datatype, [-1]), values)],
            binary=set(),
        )
    assert caught.value.status_code == 500


# --- refusals -----------------------------------------------------------------------------------------------


def one_input(datatype: str, shape: Any, data: Any, **extra: Any) -> bytes:
    return json_request({"name": "t", "datatype": datatype, "shape": shape, "data": data, **extra})


FP32_PAIR = [spec("t", "FP32", [-1, 2])]


@pytest.mark.parametrize(
    ("body", "specs", "fragment"),
    [
        (b'{"inputs": [', FP32_PAIR, "not valid JSON"),
        (b"[1, 2]", FP32_PAIR, "must be a JSON object, got a list"),
        (b"{}", FP32_PAIR, "'inputs' must be a list of tensors, got null"),
        (json_request({"datatype": "FP32", "shape": [1, 2], "data": [1, 2]}), FP32_PAIR, "name must be"),
        (json_request("t"), FP32_PAIR, "inputs[0] must be a JSON object, got a string"),
        (one_input("FP32", [-1, 2], [1, 2]), FP32_PAIR, "shape must be a list of non-negative integers"),
        (one_input("FP32", ["1", 2], [1, 2]), FP32_PAIR, "shape must be a list of non-negative integers"),
        (one_input("FP32", [True, 2], [1, 2]), FP32_PAIR, "shape must be a list of non-negative integers"),
        (one_input("FP32", "1x2", [1, 2]), FP32_PAIR, "shape must be a list of non-negative integers"),
        (one_input("FP8", [1, 2], [1, 2]), FP32_PAIR, "datatype must be one of BOOL"),
        (one_input("FP32", [1, 2], [1, 2], parameters=[]), FP32_PAIR, "parameters must be a JSON object"),
        (
            json_request({"name": "u", "datatype": "FP32", "shape": [1], "data": [1]}),
            FP32_PAIR,
            "Unknown input 'u'",
        ),
        (
            one_input("FP32", [1, 2], [1, 2]),
            [*FP32_PAIR, spec("mask", "BOOL", [-1])],
            "Missing input(s) 'mask'",
        ),
        (
            json_request(*[{"name": "t", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}] * 2),
            FP32_PAIR,
            "Input 't' is given more than once",
        ),
        (one_input("FP64", [1, 2], [1, 2]), FP32_PAIR, "datatype FP64 given, the model expects FP32"),
        (one_input("FP32", [2], [1, 2]), FP32_PAIR, "shape [2] given, the model expects [-1, 2]"),
        (one_input("FP32", [1, 3], [1, 2, 3]), FP32_PAIR, "shape [1, 3] given, the model expects [-1, 2]"),
        (one_input("FP32", [1, 2], [1]), FP32_PAIR, "data has 1 elements, shape [1, 2] needs 2"),
        (
            one_input("FP32", [10**12, 2], [1, 2]),
            FP32_PAIR,
            "2000000000000 elements, over the limit of 50000000",
        ),
        (one_input("FP32", [1, 2], "1 2"), FP32_PAIR, "data must be a list, got a string"),
        (one_input("FP32", [1, 2], None), FP32_PAIR, "data must be a list, got null"),
        (json_request({"name": "t", "datatype": "FP32", "shape": [1, 2]}), FP32_PAIR, "has neither 'data'"),
        (one_input("FP32", [1, 2], [1, "2"]), FP32_PAIR, "FP32 data must be numbers, got a string ('2')"),
        (one_input("FP32", [1, 2], [1, None]), FP32_PAIR, "FP32 data must be numbers, got null"),
        (one_input("FP32", [1, 2], [1, True]), FP32_PAIR, "FP32 data must be numbers, got a boolean"),
        (one_input("FP32", [1, 2], [1, {}]), FP32_PAIR, "FP32 data must be numbers, got an object"),
        (one_input("FP32", [1, 2], [1, 1e39]), FP32_PAIR, "1e+39 is out of range for FP32"),
        (one_input("FP16", [2], [1, 70000]), [spec("t", "FP16", [2])], "70000 is out of range for FP16"),
        (
            one_input("INT32", [2], [1, 1.5]),
            [spec("t", "INT32", [2])],
            "INT32 data must be integers, got a non-in",
        ),
        (one_input("INT32", [2], [1, 2.0]), [spec("t", "INT32", [2])], "INT32 data must be integers"),
        (
            one_input("INT64", [2], [1, "2"]),
            [spec("t", "INT64", [2])],
            "INT64 data must be integers, got a string",
        ),
        (
            one_input("INT8", [2], [1, True]),
            [spec("t", "INT8", [2])],
            "INT8 data must be integers, got a boolean",
        ),
        (
            one_input("UINT8", [2], [1, 300]),
            [spec("t", "UINT8", [2])],
            "300 is out of range for UINT8 (0 to 255)",
        ),
        (one_input("UINT32", [2], [-1, 3]), [spec("t", "UINT32", [2])], "-1 is out of range for UINT32"),
        (one_input("INT8", [2], [-129, 3]), [spec("t", "INT8", [2])], "-129 is out of range for INT8"),
        (
            one_input("INT64", [1], [2**63]),
            [spec("t", "INT64", [1])],
            "9223372036854775808 is out of range for INT64",
        ),
        (
            one_input("BOOL", [2], [True, 1]),
            [spec("t", "BOOL", [2])],
            "BOOL data must be true or false, got an int",
        ),
        (
            one_input("BYTES", [2], ["a", 1]),
            [spec("t", "BYTES", [2])],
            "BYTES data must be strings, got an integer",
        ),
        (
            one_input("BYTES", [1], ["not base64!"]),
            [spec("t", "BYTES", [1], content_type="base64")],
            "BYTES element 0 is not valid base64",
        ),
        (
            one_input("FP32", [2, 2], [[1, 2], [3]]),
            FP32_PAIR,
            "a list of 1 elements at depth 1, shape [2, 2] needs 2",
        ),
        (one_input("FP32", [2, 2], [[1, 2], 3]), FP32_PAIR, "nested data is not rectangular"),
        (one_input("FP32", [2, 2], [[1, 2]]), FP32_PAIR, "nested data has 1 rows, shape [2, 2] needs 2"),
        (one_input("FP32", [1, 2], [[[1], [2]]]), FP32_PAIR, "FP32 data must be numbers, got a list"),
        (one_input("FP32", [2], [[1], [2]]), [spec("t", "FP32", [2])], "fewer than 2 dimensions"),
        (json_request(id=5), FP32_PAIR, "'id' must be a string, got an integer"),
        (
            json_request(parameters={"binary_data_output": "yes"}),
            FP32_PAIR,
            "binary_data_output must be true or",
        ),
        (json_request(parameters=[1]), FP32_PAIR, "'parameters' must be a JSON object, got a list"),
        (json_request(outputs={"name": "y"}), FP32_PAIR, "'outputs' must be a list"),
        (json_request(outputs=[{"parameters": {}}]), FP32_PAIR, "outputs[0].name must be a non-empty string"),
        (
            json_request(outputs=[{"name": "y"}, {"name": "y"}]),
            FP32_PAIR,
            "Output 'y' is requested more than once",
        ),
        (
            json_request(outputs=[{"name": "y", "parameters": {"binary_data": 1}}]),
            FP32_PAIR,
            "Output 'y': binary_data must be true or false, got an integer",
        ),
    ],
)
def test_json_requests_that_break_the_rules_are_refused(
    body: bytes, specs: list[TensorSpec], fragment: str
) -> None:
    assert fragment in refusal(body, specs)


def test_a_huge_shape_is_refused_before_anything_is_allocated() -> None:
    specs = [spec("t", "FP64", [-1, -1])]
    body, header_length = binary_request(
        {
            "inputs": [
                {
                    "name": "t",
                    "datatype": "FP64",
                    "shape": [10**6, 10**6],
                    "parameters": {"binary_data_size": 8},
                }
            ]
        },
        b"\x00" * 8,
    )

    assert "1000000000000 elements, over the limit" in refusal(body, specs, header_length)
    bytes_body = one_input("BYTES", [10**12], ["a"])
    assert "over the limit of 50000000" in refusal(bytes_body, [spec("t", "BYTES", [-1])])


def test_max_elements_is_configurable() -> None:
    body = one_input("FP32", [2, 2], [1, 2, 3, 4])

    assert "4 elements, over the limit of 3" in refusal(body, FP32_PAIR, max_elements=3)


def binary_fp32(size: int | Any = 8, **extra: Any) -> dict[str, Any]:
    tensor = {"name": "t", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": size}}
    return {"inputs": [{**tensor, **extra}]}


TWO_FLOATS = np.array([1, 2], dtype="<f4").tobytes()


@pytest.mark.parametrize(
    ("header_length", "fragment"),
    [
        ("abc", "must be a non-negative integer, got 'abc'"),
        ("-5", "must be a non-negative integer, got '-5'"),
        ("1.5", "must be a non-negative integer"),
        ("\u0661\u0662", "must be a non-negative integer"),
        ("", "must be a non-negative integer"),
        ("9" * 30, "must be a non-negative integer"),
        ("100000", "Inference-Header-Content-Length is 100000 but the body has only"),
    ],
)
def test_bad_header_lengths_are_refused(header_length: str, fragment: str) -> None:
    body, _ = binary_request(binary_fp32(), TWO_FLOATS)

    assert fragment in refusal(body, FP32_PAIR, header_length)


def test_a_header_length_that_cuts_the_json_is_refused() -> None:
    body, header_length = binary_request(binary_fp32(), TWO_FLOATS)

    assert "not valid JSON" in refusal(body, FP32_PAIR, str(int(header_length) - 1))


@pytest.mark.parametrize(
    ("document", "tail", "fragment"),
    [
        (
            binary_fp32(),
            TWO_FLOATS + b"\x00" * 4,
            "4 bytes of binary data follow the JSON header that no input",
        ),
        (binary_fp32(), TWO_FLOATS[:-1], "says binary_data_size 8 but only 7 bytes of binary data are left"),
        (binary_fp32(4), TWO_FLOATS[:4], "binary_data_size is 4 bytes, but shape [1, 2] of FP32 needs 8"),
        (binary_fp32(data=[1, 2]), TWO_FLOATS, "has both 'data' and parameters.binary_data_size"),
        (binary_fp32(-8), TWO_FLOATS, "binary_data_size must be a non-negative integer, got -8"),
        (binary_fp32("8"), TWO_FLOATS, "binary_data_size must be a non-negative integer, got '8'"),
        (
            {
                "inputs": [
                    {"name": "t", "datatype": "BOOL", "shape": [3], "parameters": {"binary_data_size": 3}}
                ]
            },
            b"\x01\x00\x02",
            "BOOL bytes must be 0 or 1, got 2 at element 2",
        ),
        (
            {
                "inputs": [
                    {"name": "t", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 6}}
                ]
            },
            struct.pack("<I", 5) + b"ab",
            "BYTES element 0 says 5 bytes but only 2 are left",
        ),
        (
            {
                "inputs": [
                    {"name": "t", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 7}}
                ]
            },
            struct.pack("<I", 2) + b"abc",
            "1 bytes are left after the 1 BYTES elements",
        ),
        (
            {
                "inputs": [
                    {"name": "t", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": 6}}
                ]
            },
            struct.pack("<I", 2) + b"ab",
            "2 BYTES elements need at least 8 bytes",
        ),
        (
            {
                "inputs": [
                    {"name": "t", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": 10}}
                ]
            },
            struct.pack("<I", 3) + b"abc" + b"\x00\x00\x00",
            "binary data ends inside the length of BYTES element 1",
        ),
    ],
)
def test_binary_requests_that_break_the_rules_are_refused(
    document: dict[str, Any], tail: bytes, fragment: str
) -> None:
    datatype = document["inputs"][0]["datatype"]
    specs = [spec("t", datatype, [-1, 2] if datatype == "FP32" else [-1])]
    body, header_length = binary_request(document, tail)

    assert fragment in refusal(body, specs, header_length)


def test_binary_inputs_without_a_header_length_are_refused_with_a_hint() -> None:
    body, _ = binary_request(binary_fp32(), TWO_FLOATS)
    header_only = orjson.dumps(binary_fp32())

    assert "no Inference-Header-Content-Length was sent" in refusal(header_only, FP32_PAIR)
    # The whole body as JSON: the raw bytes after the header are not JSON.
    assert "not valid JSON" in refusal(body, FP32_PAIR)
