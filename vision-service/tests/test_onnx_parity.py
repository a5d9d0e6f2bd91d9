"""Through the real app, RUNTIME=onnx and RUNTIME=torch on the same built folder answer alike.

As close as the ONNX export's own parity check found the two (its manifest's `max_abs_diff_probs`),
with the same classes, each answer naming the artifact that gave it; and batching changes no answer.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from starlette.testclient import TestClient

from modelgate_core.artifacts import Manifest, read_manifest
from modelgate_core.testing import wait_until_ready
from vision_service.app import VisionSettings, create_app

REPO = Path(__file__).resolve().parents[2]
MODELS = Path(os.environ.get("MODEL_REPOSITORY") or REPO / "models")
FOLDER = MODELS / "imagenet" / "1"
ASSETS = REPO / "tests" / "assets"
CLASSIFY = "/v1/vision/classify"
ESPRESSO = 967
# The API rounds scores to 6 decimals, so two rounded scores may differ by one step more than the model's.
ROUNDING = 1e-6


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    if not (FOLDER / "model-settings.json").is_file():
        pytest.fail(f"{FOLDER} is not built (run `make models`)")
    return read_manifest(FOLDER)


@pytest.fixture(scope="module")
def max_diff(manifest: Manifest) -> float:
    """How far the export found ONNX from torch on its held-out photos, as one batch or one by one."""
    return manifest.metrics["max_abs_diff_probs"]


def photos() -> list[bytes]:
    """Real uploads: the two photos as JPEG, and the coffee one as PNG."""
    coffee = (ASSETS / "coffee.jpg").read_bytes()
    png = io.BytesIO()
    Image.open(io.BytesIO(coffee)).save(png, "PNG")
    return [coffee, (ASSETS / "chelsea.jpg").read_bytes(), png.getvalue()]


@contextmanager
def started(**environment: str) -> Iterator[TestClient]:
    """The app as a deployment configures it, from the environment, with its model loaded."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MODEL_REPOSITORY", str(MODELS))
        for name, value in environment.items():
            env.setenv(name, value)
        settings = VisionSettings(torch_threads=1, log_json=False)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_until_ready(client)
        yield client


@pytest.fixture(scope="module")
def onnx_client(manifest: Manifest) -> Iterator[TestClient]:
    with started(RUNTIME="onnx", BATCHING="false") as client:
        yield client


@pytest.fixture(scope="module")
def torch_client(manifest: Manifest) -> Iterator[TestClient]:
    with started(RUNTIME="torch", BATCHING="false") as client:
        yield client


def classify(client: TestClient, data: bytes) -> Any:
    return client.post(CLASSIFY, files={"file": ("img", data, "image/jpeg")})


def assert_same_answer(got: dict[str, Any], expected: dict[str, Any], tolerance: float) -> None:
    """The same classes in the same order, each scored within `tolerance`."""
    assert [p["class_id"] for p in got["predictions"]] == [p["class_id"] for p in expected["predictions"]]
    assert [p["label"] for p in got["predictions"]] == [p["label"] for p in expected["predictions"]]
    for mine, theirs in zip(got["predictions"], expected["predictions"], strict=True):
        assert mine["score"] == pytest.approx(theirs["score"], rel=0, abs=tolerance)


def test_onnx_and_torch_answer_alike(
    onnx_client: TestClient, torch_client: TestClient, max_diff: float
) -> None:
    tolerance = max_diff + ROUNDING
    for data in photos():
        onnx_answer, torch_answer = classify(onnx_client, data), classify(torch_client, data)
        assert onnx_answer.status_code == 200, onnx_answer.text
        assert torch_answer.status_code == 200, torch_answer.text
        assert_same_answer(onnx_answer.json(), torch_answer.json(), tolerance)
    assert classify(onnx_client, photos()[0]).json()["predictions"][0]["class_id"] == ESPRESSO


@pytest.mark.parametrize(("backend", "platform"), [("onnx", "onnxruntime_onnx"), ("torch", "pytorch_torch")])
def test_the_answer_names_the_artifact_that_gave_it(
    backend: str, platform: str, manifest: Manifest, request: pytest.FixtureRequest
) -> None:
    client: TestClient = request.getfixturevalue(f"{backend}_client")
    # The folder holds the ONNX export and the torch weights it was exported from.
    artifact = manifest.version if backend == "onnx" else manifest.extra["parent"]["version"]
    assert (".onnx." in artifact) == (backend == "onnx")
    # The public name stays; the version is the artifact's that answered.
    assert classify(client, photos()[0]).json()["model"] == {
        "name": "imagenet",
        "version": artifact,
        "model_version": "1",
    }
    (info,) = client.get("/v1/models").json()["models"]
    assert info["name"] == "imagenet" and info["version"] == artifact
    metadata = client.get("/v2/models/imagenet").json()
    assert metadata["platform"] == platform and metadata["parameters"]["backend"] == backend


def test_runtime_and_batching_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNTIME", "torch")
    monkeypatch.setenv("BATCHING", "false")
    monkeypatch.setenv("BATCH_MAX_SIZE", "8")
    settings = VisionSettings()
    assert settings.runtime == "torch" and settings.batch_policy() is None
    assert settings.batch_max_size == 8
    monkeypatch.delenv("RUNTIME")
    monkeypatch.delenv("BATCHING")
    default = VisionSettings()
    assert default.runtime == "onnx" and default.batch_policy() is None  # off by default for vision


def test_batched_uploads_answer_as_unbatched_and_a_bad_one_fails_alone(
    onnx_client: TestClient, max_diff: float
) -> None:
    # Batched and alone, ONNX is each time within `max_diff` of torch: so within twice that of itself.
    tolerance = 2 * max_diff + ROUNDING
    good = photos()
    uploads = good * 2 + [good[0][: len(good[0]) // 2], b"not an image"]
    alone = [classify(onnx_client, data).json() for data in good]
    with (
        started(BATCHING="true", BATCH_MAX_WAIT_MS="200") as client,
        ThreadPoolExecutor(len(uploads)) as pool,
    ):
        responses = list(pool.map(lambda data: classify(client, data), uploads))
        metrics = client.get("/metrics").text
    assert [r.status_code for r in responses] == [200] * 6 + [422, 415]
    for i, response in enumerate(responses[:6]):
        assert_same_answer(response.json(), alone[i % len(good)], tolerance)
    # Fewer model calls than requests: some were merged (counts are per process, so only a lower bound).
    calls = sizes = 0.0
    for line in metrics.splitlines():
        if line.startswith('modelgate_model_batch_size_count{model="imagenet"}'):
            calls = float(line.split()[-1])
        if line.startswith('modelgate_model_batch_size_sum{model="imagenet"}'):
            sizes = float(line.split()[-1])
    assert sizes > calls > 0
