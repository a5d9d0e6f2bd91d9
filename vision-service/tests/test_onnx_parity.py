"""The ONNX artifact answers like the torch one: raw outputs on real photos, and the service either way."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from modelgate_core.artifacts import Manifest, read_manifest
from modelgate_core.testing import wait_until_ready
from vision_service.app import VisionSettings, create_app
from vision_service.onnx_runner import OnnxImageNetRunner
from vision_service.runners import ImageNetRunner

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("ARTIFACTS_DIR") or REPO / "artifacts")
ASSETS = REPO / "tests" / "assets"
CLASSIFY = "/v1/vision/classify"
ESPRESSO = 967


def manifest_of(name: str) -> Manifest:
    if not (ARTIFACTS / name / "manifest.json").is_file():
        pytest.skip(f"artifacts/{name} is not built (run `make models`)")
    return read_manifest(ARTIFACTS / name)


def photos() -> list[bytes]:
    """Real uploads: the two photos as JPEG, and the coffee one as PNG."""
    coffee = (ASSETS / "coffee.jpg").read_bytes()
    png = io.BytesIO()
    Image.open(io.BytesIO(coffee)).save(png, "PNG")
    return [coffee, (ASSETS / "chelsea.jpg").read_bytes(), png.getvalue()]


def test_onnx_outputs_equal_torch_on_real_photos() -> None:
    torch_manifest, onnx_manifest = manifest_of("imagenet"), manifest_of("imagenet-onnx")
    # The export is of the torch artifact that is there, not of an older one.
    assert onnx_manifest.extra["parent"]["version"] == torch_manifest.version
    assert onnx_manifest.version.startswith(torch_manifest.version + ".onnx.")
    runners: list[ImageNetRunner] = []
    for runner_class, name, manifest in (
        (ImageNetRunner, "imagenet", torch_manifest),
        (OnnxImageNetRunner, "imagenet-onnx", onnx_manifest),
    ):
        runner = runner_class(max_pixels=10**7, torch_threads=1)
        runner.load(ARTIFACTS / name, manifest)
        runners.append(runner)
    torch_runner, onnx_runner = runners
    batch = [torch_runner.preprocess(data) for data in photos()]
    expected = np.stack(torch_runner.predict(batch))
    together = np.stack(onnx_runner.predict(batch))
    one_by_one = np.stack([onnx_runner.predict([x])[0] for x in batch])
    for got in (together, one_by_one):
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert (np.argsort(-got, axis=-1)[:, :5] == np.argsort(-expected, axis=-1)[:, :5]).all()
    assert [p.class_id for p in onnx_runner.postprocess(together[0])][:5].count(ESPRESSO) == 1


@contextmanager
def started(settings: VisionSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_until_ready(client)
        yield client


def classify(client: TestClient, data: bytes) -> Any:
    return client.post(CLASSIFY, files={"file": ("img", data, "image/jpeg")})


@pytest.mark.parametrize("runtime", ["onnx", "torch"])
def test_service_answers_with_either_runtime(runtime: str) -> None:
    artifact = "imagenet-onnx" if runtime == "onnx" else "imagenet"
    manifest = manifest_of(artifact)
    settings = VisionSettings(artifacts_dir=ARTIFACTS, runtime=runtime, torch_threads=1, log_json=False)
    with started(settings) as client:
        response = classify(client, photos()[0])
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["predictions"][0]["class_id"] == ESPRESSO
        # The public name stays; the version is the artifact's that answered.
        assert body["model"] == {"name": "imagenet", "version": manifest.version}
        (info,) = client.get("/v1/models").json()["models"]
        assert info["name"] == "imagenet" and info["artifact"] == artifact
        assert info["framework"].startswith("onnxruntime" if runtime == "onnx" else "torch")


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


def test_concurrent_uploads_share_batches_and_a_bad_one_fails_alone() -> None:
    manifest_of("imagenet-onnx")
    settings = VisionSettings(
        artifacts_dir=ARTIFACTS, torch_threads=1, log_json=False, batching=True, batch_max_wait_ms=200
    )
    good = photos()[0]
    uploads = [good] * 6 + [good[: len(good) // 2], b"not an image"]
    with started(settings) as client, ThreadPoolExecutor(len(uploads)) as pool:
        responses = list(pool.map(lambda data: classify(client, data), uploads))
        assert [r.status_code for r in responses] == [200] * 6 + [422, 415]
        assert {r.json()["predictions"][0]["class_id"] for r in responses[:6]} == {ESPRESSO}
        metrics = client.get("/metrics").text
    # Fewer model calls than requests: some were merged (counts are per process, so only a lower bound).
    calls = sizes = 0.0
    for line in metrics.splitlines():
        if line.startswith('modelgate_model_batch_size_count{model="imagenet"}'):
            calls = float(line.split()[-1])
        if line.startswith('modelgate_model_batch_size_sum{model="imagenet"}'):
            sizes = float(line.split()[-1])
    assert sizes > calls > 0
