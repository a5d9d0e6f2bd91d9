"""Bad input on `/v2` through the real gateway: the right 4xx, in OIP's shape, never a 500."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import httpx
import pytest

from devstack import LocalStack

pytestmark = pytest.mark.integration

IRIS = "/v2/models/iris/infer"


@pytest.fixture(scope="module")
def http(stack: LocalStack, api_key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url("gateway"), headers={"X-API-Key": api_key}, timeout=30) as client:
        yield client


def tensor(**overrides: object) -> dict[str, object]:
    return {
        "inputs": [
            {"name": "input", "datatype": "FP64", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]} | overrides
        ]
    }


def assert_oip_error(response: httpx.Response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body["error"], str) and fragment in body["error"], body
    assert body["request_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (tensor(shape=[1, 5], data=[1, 2, 3, 4, 5]), "expects [-1, 4]"),
        (tensor(datatype="INT64", data=[5, 3, 1, 0]), "FP64"),
        (tensor(data=[1.0, 2.0, 3.0]), "element"),
        (tensor(data=["a", "b", "c", "d"]), "input"),
        (tensor(name="features"), "features"),
        (tensor(shape=[10**9, 4]), "element"),
        ({"inputs": []}, "input"),
        ({"inputs": [{"name": "input"}]}, "input"),
        ({**tensor(), "outputs": [{"name": "logits"}]}, "logits"),
    ],
    ids=[
        "shape",
        "datatype",
        "element-count",
        "strings",
        "unknown-input",
        "huge-shape",
        "no-inputs",
        "no-fields",
        "unknown-output",
    ],
)
def test_bad_tensors_are_400(http: httpx.Client, body: dict[str, object], fragment: str) -> None:
    assert_oip_error(http.post(IRIS, json=body), 400, fragment)


def test_malformed_json_is_400_not_422(http: httpx.Client) -> None:
    response = http.post(IRIS, content=b'{"inputs": [', headers={"content-type": "application/json"})
    assert_oip_error(response, 400, "JSON")


def test_binary_header_lengths_that_lie_are_400(http: httpx.Client) -> None:
    header = (
        b'{"inputs":[{"name":"input","datatype":"FP64","shape":[1,4],"parameters":{"binary_data_size":32}}]}'
    )
    body = header + struct.pack("<4d", 5.1, 3.5, 1.4, 0.2)
    octets = {"content-type": "application/octet-stream"}
    ok = http.post(
        IRIS, content=body, headers={**octets, "inference-header-content-length": str(len(header))}
    )
    assert ok.status_code == 200, ok.text
    for bad in (str(len(body) + 10), "-1", "ten", str(10**15)):
        response = http.post(IRIS, content=body, headers={**octets, "inference-header-content-length": bad})
        assert_oip_error(response, 400, "Inference-Header-Content-Length")
    short = http.post(
        IRIS, content=body[:-8], headers={**octets, "inference-header-content-length": str(len(header))}
    )
    assert_oip_error(short, 400, "bytes")


def test_unknown_model_and_version_are_404(http: httpx.Client) -> None:
    assert_oip_error(http.post("/v2/models/nope/infer", json=tensor()), 404, "nope")
    assert_oip_error(http.post("/v2/models/iris/versions/3/infer", json=tensor()), 404, "version")


def test_an_oversized_tensor_body_is_413(http: httpx.Client, stack: LocalStack) -> None:
    huge = b"0" * (11 * 1024 * 1024)
    response = http.post(IRIS, content=huge, headers={"content-type": "application/octet-stream"})
    assert_oip_error(response, 413, "limit")


def test_missing_key_is_401_in_the_oip_shape(stack: LocalStack) -> None:
    response = httpx.post(stack.url("gateway") + IRIS, json=tensor())
    assert_oip_error(response, 401, "API key")
