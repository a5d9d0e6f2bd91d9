"""The Open Inference Protocol through the real gateway, driven by tritonclient (Triton's own HTTP
client): health, metadata, JSON and binary tensors for the four built-in models, the repository
extension, scopes, and the errors a client gets back."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from devstack import LocalStack

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
COFFEE = REPO / "tests" / "assets" / "coffee.jpg"
FLOWERS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]], dtype=np.float64)


@pytest.fixture(scope="module")
def client(stack: LocalStack) -> Iterator[triton.InferenceServerClient]:
    url = stack.url("gateway").removeprefix("http://")
    with triton.InferenceServerClient(url=url, connection_timeout=60, network_timeout=60) as c:
        yield c


# tritonclient adds `Inference-Header-Content-Length` to the headers dict it is given for a binary
# request, so every call gets a copy (`dict(headers)`), or a later JSON call would carry a stale one.
@pytest.fixture(scope="module")
def headers(key_factory: Callable[[str, str], str]) -> dict[str, str]:
    return {"X-API-Key": key_factory("oip-user", "tabular,vision,nlp")}


@pytest.fixture(scope="module")
def admin(key_factory: Callable[[str, str], str]) -> dict[str, str]:
    return {"X-API-Key": key_factory("oip-admin", "tabular,admin")}


def texts(values: np.ndarray) -> list[str]:
    """BYTES elements as text: tritonclient gives `bytes` from binary answers and `str` from JSON."""
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values.ravel()]


def local_model(stack: LocalStack, name: str) -> Any:
    """The very estimator the service serves, loaded here to compute the expected answers."""
    return joblib.load(stack.repository / name / "1" / "model.joblib")


def iris_request(binary: bool) -> tuple[list[triton.InferInput], list[triton.InferRequestedOutput]]:
    tensor = triton.InferInput("input", list(FLOWERS.shape), "FP64")
    tensor.set_data_from_numpy(FLOWERS, binary_data=binary)
    outputs = [
        triton.InferRequestedOutput("predict", binary_data=binary),
        triton.InferRequestedOutput("predict_proba", binary_data=binary),
    ]
    return [tensor], outputs


def test_server_health_and_metadata(client: triton.InferenceServerClient, headers: dict[str, str]) -> None:
    assert client.is_server_live(headers=dict(headers))
    assert client.is_server_ready(headers=dict(headers))
    metadata = client.get_server_metadata(headers=dict(headers))
    assert metadata["extensions"] == ["binary_tensor_data", "model_repository"]


def test_model_metadata_and_readiness(client: triton.InferenceServerClient, headers: dict[str, str]) -> None:
    metadata = client.get_model_metadata("iris", headers=dict(headers))
    assert metadata["name"] == "iris" and metadata["versions"] == ["1"]
    assert metadata["platform"] == "sklearn"
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, 4], "parameters": {}}]
    assert [o["name"] for o in metadata["outputs"]] == ["predict", "predict_proba"]
    versioned = client.get_model_metadata("sentiment", model_version="1", headers=dict(headers))
    assert versioned["inputs"][0]["datatype"] == "BYTES"
    assert client.is_model_ready("imagenet", headers=dict(headers))
    assert client.is_model_ready("fraud", model_version="1", headers=dict(headers))


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_iris_infer_equals_the_local_model(
    client: triton.InferenceServerClient, headers: dict[str, str], stack: LocalStack, binary: bool
) -> None:
    inputs, outputs = iris_request(binary)
    result = client.infer("iris", inputs, outputs=outputs, request_id="iris-1", headers=dict(headers))
    assert result.get_response()["id"] == "iris-1"
    assert result.get_response()["model_version"] == "1"
    model = local_model(stack, "iris")
    np.testing.assert_array_equal(result.as_numpy("predict"), model.predict(FLOWERS))
    np.testing.assert_allclose(result.as_numpy("predict_proba"), model.predict_proba(FLOWERS), rtol=1e-12)


def test_fraud_infer_with_a_version_equals_the_local_model(
    client: triton.InferenceServerClient, headers: dict[str, str], stack: LocalStack
) -> None:
    rng = np.random.default_rng(7)
    rows = np.abs(rng.normal(size=(5, 16))) * 10
    tensor = triton.InferInput("input", list(rows.shape), "FP64")
    tensor.set_data_from_numpy(rows)
    result = client.infer("fraud", [tensor], model_version="1", headers=dict(headers))
    np.testing.assert_allclose(
        result.as_numpy("predict_proba"), local_model(stack, "fraud").predict_proba(rows)
    )


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_sentiment_of_byte_texts(
    client: triton.InferenceServerClient, headers: dict[str, str], binary: bool
) -> None:
    sentences = np.array([b"I love this, it is wonderful", b"This is awful, I hate it"], dtype=object)
    tensor = triton.InferInput("text", [2], "BYTES")
    tensor.set_data_from_numpy(sentences, binary_data=binary)
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("label", "score")]
    result = client.infer("sentiment", [tensor], outputs=outputs, headers=dict(headers))
    assert texts(result.as_numpy("label")) == ["positive", "negative"]
    scores = result.as_numpy("score")
    assert scores.dtype == np.float32 and bool((scores > 0.5).all())


def test_imagenet_classifies_the_coffee_photo_as_espresso(
    client: triton.InferenceServerClient, headers: dict[str, str]
) -> None:
    image = np.array([COFFEE.read_bytes()], dtype=object)
    tensor = triton.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(image, binary_data=True)
    result = client.infer(
        "imagenet", [tensor], outputs=[triton.InferRequestedOutput("label")], headers=dict(headers)
    )
    assert texts(result.as_numpy("label"))[0] == "espresso"


def test_imagenet_takes_base64_in_json(client: triton.InferenceServerClient, headers: dict[str, str]) -> None:
    encoded = np.array([base64.b64encode(COFFEE.read_bytes())], dtype=object)
    tensor = triton.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(encoded, binary_data=False)
    result = client.infer(
        "imagenet",
        [tensor],
        outputs=[triton.InferRequestedOutput("label", binary_data=False)],
        parameters={"top_k": 3},
        headers=dict(headers),
    )
    labels = result.as_numpy("label")
    assert labels.shape == (1, 3) and texts(labels)[0] == "espresso"


def test_repository_index_load_and_unload(
    client: triton.InferenceServerClient, admin: dict[str, str], headers: dict[str, str]
) -> None:
    index = client.get_model_repository_index(headers=dict(admin))
    states = {(e["name"], e["version"]): e["state"] for e in index}
    for name in ("iris", "fraud", "imagenet", "sentiment"):
        assert states[(name, "1")] == "READY"
    try:
        client.unload_model("fraud", headers=dict(admin))
        assert not client.is_model_ready("fraud", headers=dict(headers))
    finally:
        client.load_model("fraud", headers=dict(admin))
    assert client.is_model_ready("fraud", headers=dict(headers))


def test_errors_reach_the_client_with_their_status(
    client: triton.InferenceServerClient, headers: dict[str, str]
) -> None:
    def status_of(call: Callable[[], object]) -> tuple[str | None, str]:
        with pytest.raises(InferenceServerException) as caught:
            call()
        return caught.value.status(), caught.value.message()

    wrong_width = triton.InferInput("input", [1, 3], "FP64")
    wrong_width.set_data_from_numpy(np.zeros((1, 3)))
    status, message = status_of(lambda: client.infer("iris", [wrong_width], headers=dict(headers)))
    assert status == "400" and "expects [-1, 4]" in message

    wrong_type = triton.InferInput("input", [1, 4], "FP32")
    wrong_type.set_data_from_numpy(np.zeros((1, 4), dtype=np.float32))
    status, message = status_of(lambda: client.infer("iris", [wrong_type], headers=dict(headers)))
    assert status == "400" and "FP64" in message

    status, message = status_of(lambda: client.get_model_metadata("no-such-model", headers=dict(headers)))
    assert status == "404" and "no-such-model" in message
    status, message = status_of(
        lambda: client.get_model_metadata("iris", model_version="7", headers=dict(headers))
    )
    assert status == "404" and "version '7'" in message
    status, message = status_of(lambda: client.get_model_metadata("iris", headers={"X-API-Key": "mg_wrong"}))
    assert status == "401"
    status, _ = status_of(lambda: client.get_model_repository_index(headers=dict(headers)))
    assert status == "403"
