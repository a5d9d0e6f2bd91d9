"""Serve your own model: a scikit-learn model saved with joblib and another exported to ONNX with
skl2onnx, dropped into the running stack's repository, called through the gateway with tritonclient
(predictions equal to the ones computed here), then removed again (404)."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import joblib
import numpy as np
import pytest
import tritonclient.http as triton
from skl2onnx import to_onnx
from sklearn.datasets import load_wine
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tritonclient.utils import InferenceServerException

from devstack import LocalStack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def wine() -> tuple[np.ndarray, np.ndarray]:
    data = load_wine()
    return data.data.astype(np.float64), data.target


@pytest.fixture(scope="module")
def client(stack: LocalStack) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(url=stack.url("gateway").removeprefix("http://")) as c:
        yield c


@pytest.fixture(scope="module")
def keys(key_factory: Callable[[str, str], str]) -> dict[str, dict[str, str]]:
    return {
        "admin": {"X-API-Key": key_factory("own-admin", "admin")},
        "wine": {"X-API-Key": key_factory("wine-only", "model:wine-lr")},
        "tabular": {"X-API-Key": key_factory("own-tabular", "tabular")},
    }


def write_folder(repository: Path, name: str, settings: dict[str, object]) -> Path:
    """A version folder assembled beside the repository and moved in whole (as a user should)."""
    staging = repository.parent / f"staging-{name}"
    staging.mkdir()
    (staging / "model-settings.json").write_text(json.dumps(settings))
    return staging


def publish(staging: Path, repository: Path, name: str) -> None:
    (repository / name).mkdir()
    staging.rename(repository / name / "1")


def wait_for_status(stack: LocalStack, key: dict[str, str], path: str, status: int, timeout: float) -> None:
    """Poll the gateway until `path` answers `status` (the services poll their repository)."""
    deadline = time.monotonic() + timeout
    last = None
    with httpx.Client(base_url=stack.url("gateway"), headers=key, timeout=10) as http:
        while time.monotonic() < deadline:
            last = http.get(path)
            if last.status_code == status:
                return
            time.sleep(0.2)
    raise AssertionError(f"{path} did not answer {status} in {timeout}s: {last and last.text}")


def test_own_sklearn_and_onnx_models_through_the_gateway(
    stack: LocalStack,
    client: triton.InferenceServerClient,
    keys: dict[str, dict[str, str]],
    wine: tuple[np.ndarray, np.ndarray],
) -> None:
    features, target = wine
    repository = stack.repository
    lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(features, target)
    forest = RandomForestClassifier(n_estimators=20, random_state=0).fit(features.astype(np.float32), target)

    # 1. Save it, 2. write model-settings.json, 3. drop the folder in.
    staging = write_folder(repository, "wine-lr", {"runtime": "sklearn"})
    joblib.dump(lr, staging / "model.joblib")
    publish(staging, repository, "wine-lr")
    staging = write_folder(repository, "wine-forest", {"runtime": "onnx"})
    onnx_model = to_onnx(forest, features[:1].astype(np.float32), options={id(forest): {"zipmap": False}})
    (staging / "model.onnx").write_bytes(onnx_model.SerializeToString())
    publish(staging, repository, "wine-forest")

    # Found by polling, then routed by the running gateway: no restart, no rebuild.
    wait_for_status(stack, keys["tabular"], "/v2/models/wine-lr/ready", 200, timeout=30)
    # An explicit load answers once the model is ready in every worker.
    client.load_model("wine-forest", headers=dict(keys["admin"]))
    assert client.is_model_ready("wine-forest", headers=dict(keys["tabular"]))

    rows = features[::10]
    tensor = triton.InferInput("input", list(rows.shape), "FP64")
    tensor.set_data_from_numpy(rows)
    result = client.infer("wine-lr", [tensor], headers=dict(keys["wine"]))
    np.testing.assert_array_equal(result.as_numpy("predict"), lr.predict(rows))
    np.testing.assert_allclose(result.as_numpy("predict_proba"), lr.predict_proba(rows), rtol=1e-12)

    metadata = client.get_model_metadata("wine-forest", headers=dict(keys["tabular"]))
    (onnx_input,) = metadata["inputs"]
    assert onnx_input["datatype"] == "FP32" and onnx_input["shape"] == [-1, 13]
    as_float = rows.astype(np.float32)
    tensor = triton.InferInput(onnx_input["name"], list(as_float.shape), "FP32")
    tensor.set_data_from_numpy(as_float)
    result = client.infer("wine-forest", [tensor], headers=dict(keys["tabular"]))
    np.testing.assert_array_equal(result.as_numpy("label"), forest.predict(as_float))
    np.testing.assert_allclose(result.as_numpy("probabilities"), forest.predict_proba(as_float), atol=1e-5)

    # A key scoped to one model reaches only that model.
    with pytest.raises(InferenceServerException) as refused:
        client.get_model_metadata("wine-forest", headers=dict(keys["wine"]))
    assert refused.value.status() == "403"

    # The :predict call serves the same model.
    with httpx.Client(base_url=stack.url("gateway"), headers=dict(keys["wine"])) as http:
        answer = http.post("/v1/models/wine-lr:predict", json={"instances": rows[:2].tolist()})
    assert answer.status_code == 200
    assert [p["predict"] for p in answer.json()["predictions"]] == lr.predict(rows[:2]).tolist()

    # Removing the folder removes the model.
    shutil.rmtree(repository / "wine-forest")
    wait_for_status(stack, keys["tabular"], "/v2/models/wine-forest", 404, timeout=30)
    with pytest.raises(InferenceServerException) as gone:
        client.infer("wine-forest", [tensor], headers=dict(keys["tabular"]))
    assert gone.value.status() == "404"
    # Unloaded on purpose: gone from serving while its folder stays.
    client.unload_model("wine-lr", headers=dict(keys["admin"]))
    assert not client.is_model_ready("wine-lr", headers=dict(keys["tabular"]))
    states = {e["name"]: e["state"] for e in client.get_model_repository_index(headers=dict(keys["admin"]))}
    assert states["wine-lr"] == "UNAVAILABLE" and "wine-forest" not in states
    # Leave the repository as the other tests know it.
    shutil.rmtree(repository / "wine-lr")
    wait_for_status(stack, keys["tabular"], "/v2/models/wine-lr", 404, timeout=30)


def test_a_broken_folder_is_unavailable_with_its_reason(
    stack: LocalStack, client: triton.InferenceServerClient, keys: dict[str, dict[str, str]]
) -> None:
    staging = write_folder(stack.repository, "broken", {"runtime": "sklearn"})
    (staging / "model.joblib").write_bytes(b"not a pickle at all")
    publish(staging, stack.repository, "broken")
    with pytest.raises(InferenceServerException) as failed:
        client.load_model("broken", headers=dict(keys["admin"]))
    assert failed.value.status() == "400" and "model.joblib" in failed.value.message()
    entry = next(
        e for e in client.get_model_repository_index(headers=dict(keys["admin"])) if e["name"] == "broken"
    )
    assert entry["state"] == "UNAVAILABLE" and "model.joblib" in entry["reason"]
    # Everything else keeps serving.
    assert client.is_model_ready("iris", headers=dict(keys["tabular"]))
    shutil.rmtree(stack.repository / "broken")
    wait_for_status(stack, keys["admin"], "/v2/models/broken", 404, timeout=30)
