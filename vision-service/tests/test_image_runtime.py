"""The `image-classification` runtime on the built-in imagenet folder: both backends, real photos.

The folder is `models/imagenet/1` as `make models` writes it (MODEL_REPOSITORY points elsewhere).
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import anyio.to_thread
import numpy as np
import pytest
import torch
from PIL import Image

from modelgate_core.artifacts import Manifest
from modelgate_core.errors import BadRequest, ModelGateError, Unprocessable, UnsupportedMediaType
from modelgate_core.repository.runtime import ModelContext
from modelgate_core.repository.served import ServedVersion
from modelgate_core.repository.settings import SETTINGS_FILE, ModelSettings, read_settings
from vision_service.decode import DecodeBudget
from vision_service.image_runtime import ImageClassificationRuntime
from vision_service.network import load_efficientnet

REPO = Path(__file__).resolve().parents[2]
MODELS = Path(os.environ.get("MODEL_REPOSITORY") or REPO / "models")
ASSETS = REPO / "tests" / "assets"
ESPRESSO = 967

Runtime = ImageClassificationRuntime


@pytest.fixture(scope="module")
def folder() -> Path:
    built = MODELS / "imagenet" / "1"
    if not (built / SETTINGS_FILE).is_file():
        pytest.fail(f"{built} is not built: run make models")
    return built


def context_of(folder: Path, settings: ModelSettings | None = None) -> ModelContext:
    return ModelContext.of_folder("imagenet", "1", folder, settings)


def loaded(folder: Path, backend: Any, settings: ModelSettings | None = None) -> Runtime:
    runtime = Runtime(context_of(folder, settings), backend=backend, threads=1)
    runtime.load()
    return runtime


@pytest.fixture(scope="module")
def onnx_runtime(folder: Path) -> Runtime:
    return loaded(folder, "onnx")


@pytest.fixture(scope="module")
def torch_runtime(folder: Path) -> Runtime:
    return loaded(folder, "torch")


def photos() -> list[bytes]:
    """The two photos as JPEG, and the coffee one as PNG."""
    coffee = (ASSETS / "coffee.jpg").read_bytes()
    png = io.BytesIO()
    Image.open(io.BytesIO(coffee)).save(png, "PNG")
    return [coffee, (ASSETS / "chelsea.jpg").read_bytes(), png.getvalue()]


def images(*uploads: bytes) -> dict[str, np.ndarray[Any, Any]]:
    return {"image": np.array(list(uploads), dtype=object)}


def infer(runtime: Runtime, uploads: list[bytes], parameters: dict[str, Any] | None = None) -> Any:
    params = parameters or {}
    return runtime.postprocess(runtime.predict(runtime.preprocess(images(*uploads), params)), params)


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_the_coffee_photo_is_espresso_on_both_backends(backend: str, request: pytest.FixtureRequest) -> None:
    runtime: Runtime = request.getfixturevalue(f"{backend}_runtime")
    out = infer(runtime, photos())
    assert out["class_id"].shape == (3, 5) and out["class_id"].dtype == np.int64
    assert out["class_id"][0, 0] == ESPRESSO and out["class_id"][2, 0] == ESPRESSO
    assert out["label"][0, 0] == b"espresso"
    assert out["probabilities"].shape == (3, 1000) and out["probabilities"].dtype == np.float32
    np.testing.assert_allclose(out["probabilities"].sum(axis=-1), 1.0, atol=1e-5)
    # Best first, and each score is that class's probability.
    assert (np.diff(out["score"], axis=-1) <= 0).all()
    np.testing.assert_array_equal(
        out["score"], np.take_along_axis(out["probabilities"], out["class_id"], axis=-1)
    )
    assert [label.decode() for label in out["label"][1]] == [runtime.labels[i] for i in out["class_id"][1]]


def export_manifest(runtime: Runtime) -> Manifest:
    manifest = runtime.context.manifest
    assert manifest is not None, "the built folder has a manifest"
    return manifest


def test_the_backends_agree_as_the_export_measured(onnx_runtime: Runtime, torch_runtime: Runtime) -> None:
    """ONNX and torch on the same folder: as close as the export's own parity check found them, whether
    the photos go as one batch or one by one, with the same top classes."""
    metrics = export_manifest(onnx_runtime).metrics
    tolerance = metrics["max_abs_diff_probs"]
    # The export refuses to ship unless its top 5 agree with torch's on every held-out input.
    assert metrics["top5_agreement"] == 1.0
    prepared = onnx_runtime.preprocess(images(*photos()), {})
    expected = torch_runtime.predict(prepared)["probabilities"]
    together = onnx_runtime.predict(prepared)["probabilities"]
    one_by_one = np.concatenate(
        [onnx_runtime.predict({"image": row[None]})["probabilities"] for row in prepared["image"]]
    )
    for got in (together, one_by_one):
        np.testing.assert_allclose(got, expected, rtol=0, atol=tolerance)
        np.testing.assert_array_equal(np.argsort(-got, axis=-1)[:, :5], np.argsort(-expected, axis=-1)[:, :5])
    # The same best class, as the answer names it.
    labels = [onnx_runtime.postprocess({"probabilities": p}, {})["label"][:, 0] for p in (together, expected)]
    assert labels[0].tolist() == labels[1].tolist() and labels[0][0] == b"espresso"


def test_merged_requests_answer_as_alone(onnx_runtime: Runtime) -> None:
    uploads = photos()
    first = onnx_runtime.preprocess(images(*uploads[:1]), {})
    second = onnx_runtime.preprocess(images(*uploads[1:]), {})
    merged = onnx_runtime.predict({"image": np.concatenate([first["image"], second["image"]])})
    rows = {"probabilities": merged["probabilities"][1:]}
    alone = onnx_runtime.predict(second)["probabilities"]
    np.testing.assert_allclose(onnx_runtime.postprocess(rows, {})["probabilities"], alone, atol=1e-5)


def test_top_k_is_the_requests(onnx_runtime: Runtime) -> None:
    out = infer(onnx_runtime, photos()[:1], {"top_k": 1})
    assert out["class_id"].tolist() == [[ESPRESSO]] and out["label"].shape == (1, 1)
    every = infer(onnx_runtime, photos()[:1], {"top_k": 1000})
    assert sorted(every["class_id"][0].tolist()) == list(range(1000))


@pytest.mark.parametrize("top_k", [0, 1001, -1, "3", 2.5, True, None])
def test_a_bad_top_k_is_400(onnx_runtime: Runtime, top_k: object) -> None:
    with pytest.raises(BadRequest, match="top_k must be an integer from 1 to 1000") as caught:
        onnx_runtime.preprocess(images(photos()[0]), {"top_k": top_k})
    assert caught.value.status_code == 400


@pytest.mark.parametrize(
    ("upload", "error", "status"),
    [
        (b"just some text, not an image", UnsupportedMediaType, 415),
        (b"GIF89a\x01\x00\x01\x00", UnsupportedMediaType, 415),
        (b"", Unprocessable, 422),
        ((ASSETS / "coffee.jpg").read_bytes()[:200], Unprocessable, 422),
    ],
)
def test_bad_uploads_keep_their_4xx(
    onnx_runtime: Runtime, upload: bytes, error: type[ModelGateError], status: int
) -> None:
    # A good image in the same request does not save it: the request is refused as a whole.
    with pytest.raises(error) as caught:
        onnx_runtime.preprocess(images(photos()[0], upload), {})
    assert caught.value.status_code == status


def test_no_images_is_400(onnx_runtime: Runtime) -> None:
    with pytest.raises(BadRequest, match="holds no images"):
        onnx_runtime.preprocess({"image": np.array([], dtype=object)}, {})


def test_an_image_over_the_pixel_limit_is_413(folder: Path) -> None:
    runtime = Runtime(context_of(folder), max_pixels=100 * 100)
    runtime.load()
    with pytest.raises(ModelGateError, match="limit") as caught:
        runtime.preprocess(images(photos()[0]), {})
    assert caught.value.status_code == 413


def test_metadata_follows_the_backend(onnx_runtime: Runtime, torch_runtime: Runtime) -> None:
    manifest = onnx_runtime.context.manifest
    assert manifest is not None
    assert onnx_runtime.platform == "onnxruntime_onnx" and torch_runtime.platform == "pytorch_torch"
    assert onnx_runtime.artifact_version() == manifest.version
    assert torch_runtime.artifact_version() == manifest.extra["parent"]["version"]
    assert manifest.version.startswith(str(torch_runtime.artifact_version()) + ".onnx.")
    for runtime in (onnx_runtime, torch_runtime):
        assert runtime.batchable
        assert [(s.name, s.datatype, s.shape) for s in runtime.inputs] == [("image", "BYTES", [-1])]
        assert runtime.inputs[0].is_base64()
        assert {s.name: s.shape for s in runtime.outputs} == {
            "probabilities": [-1, 1000],
            "label": [-1, -1],
            "class_id": [-1, -1],
            "score": [-1, -1],
        }


def with_parameters(folder: Path, **changes: Any) -> ModelSettings:
    settings = read_settings(folder)
    parameters = {**settings.parameters, **changes}
    return settings.model_copy(update={"parameters": {k: v for k, v in parameters.items() if v is not None}})


class ChannelsLast(torch.nn.Module):
    """A network that takes NHWC images: the EfficientNet behind a transpose."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.network(images.permute(0, 3, 1, 2))
        return out


def test_per_channel_scaling_is_read(folder: Path, onnx_runtime: Runtime) -> None:
    per_channel = loaded(folder, "onnx", with_parameters(folder, mean=[127, 127, 127], std=[128, 128, 128]))
    expected = infer(onnx_runtime, photos())["probabilities"]
    np.testing.assert_array_equal(infer(per_channel, photos())["probabilities"], expected)


def test_a_torchscript_nhwc_network_without_manifest(
    folder: Path, torch_runtime: Runtime, tmp_path: Path
) -> None:
    example = torch.zeros(1, 224, 224, 3)
    with torch.inference_mode():
        network = ChannelsLast(load_efficientnet(folder / "weights.pt"))
        traced = torch.jit.trace(network, example)  # type: ignore[no-untyped-call]
    traced.save(str(tmp_path / "nhwc.pt"))
    shutil.copy2(folder / "labels.json", tmp_path / "labels.json")
    settings = ModelSettings(
        runtime="image-classification",
        parameters={"torchscript_file": "nhwc.pt", "labels_file": "labels.json", "layout": "NHWC"},
    )
    runtime = Runtime(ModelContext("nhwc", "1", tmp_path, settings), backend="torch")
    runtime.load()
    assert runtime.platform == "pytorch_libtorch" and runtime.artifact_version() is None
    expected = infer(torch_runtime, photos())["probabilities"]
    np.testing.assert_allclose(infer(runtime, photos())["probabilities"], expected, atol=1e-5)


def test_the_torch_backend_falls_back_only_where_it_can(folder: Path) -> None:
    # No ONNX file named: the onnx backend falls back to the torch weights.
    fallback = loaded(folder, "onnx", with_parameters(folder, onnx_file=None))
    assert fallback.backend == "torch" and fallback.platform == "pytorch_torch"
    no_network = with_parameters(folder, onnx_file=None, torch_weights=None)
    with pytest.raises(ValueError, match=r"needs parameters\.onnx_file"):
        loaded(folder, "onnx", no_network)
    with pytest.raises(ValueError, match="torch backend needs"):
        loaded(folder, "torch", no_network)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"labels": ["cat", "dog"]}, "outputs shape \\[1, 1000\\] for one image, but there are 2 labels"),
        ({"torch_architecture": "resnet50", "onnx_file": None}, "torch_architecture must be one of"),
        ({"onnx_file": "missing.onnx"}, "'missing.onnx' is not in the folder"),
        ({"crop": 0}, "crop must be a positive integer"),
        ({"mean": [1, 2]}, "mean must be a number or a list of 3"),
        ({"std": 0}, "std must not be 0"),
        ({"layout": "CHW"}, "layout must be"),
        ({"labels_file": None}, "labels or parameters.labels_file is required"),
    ],
)
def test_bad_settings_fail_the_load_with_a_reason(
    folder: Path, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        loaded(folder, "onnx", with_parameters(folder, **changes))


# --- Decoding outside the model's slot, within the worker's budget -----------------------------------


class Probed(ImageClassificationRuntime):
    """The real runtime with a probe: once armed, its next model call waits (at most `patience` s) for
    another request's image to finish decoding, and records whether one did while it ran."""

    def __init__(self, context: ModelContext, patience: float) -> None:
        super().__init__(context, threads=1)
        self.patience = patience
        self.armed = False
        self.in_model = threading.Event()
        self.decoded_meanwhile = threading.Event()
        self.overlapped: bool | None = None

    def preprocess(self, inputs: Any, parameters: Any) -> Any:
        prepared = super().preprocess(inputs, parameters)
        if self.in_model.is_set():
            self.decoded_meanwhile.set()
        return prepared

    def predict(self, batch: Any) -> Any:
        if self.armed:
            self.armed = False
            self.in_model.set()
            self.overlapped = self.decoded_meanwhile.wait(self.patience)
            self.in_model.clear()
        return super().predict(batch)


class ProbedInTheSlot(Probed):
    """The same, with every step in the model's slot, as a runtime with light steps has them."""

    light_steps = True


async def overlap_of(runtime: Probed) -> bool | None:
    """Two requests through the served version (one model slot): whether the second's image was
    decoded while the model ran the first."""
    runtime.load()
    runtime.armed = True
    served = ServedVersion(runtime, max_concurrency=1)
    coffee, chelsea = photos()[:2]
    first = asyncio.create_task(served.infer(images(coffee), {}))
    assert await anyio.to_thread.run_sync(runtime.in_model.wait, 60), "the first request never ran"
    second = await served.infer(images(chelsea), {})
    assert (await first)["class_id"][0, 0] == ESPRESSO
    assert second["class_id"].shape == (1, 5)
    return runtime.overlapped


async def test_an_image_decodes_while_the_model_runs_another(folder: Path) -> None:
    """The served version runs `preprocess` (the decode) outside the model's slot: the second request's
    image is decoded while the first holds the slot. Were the decode inside it, the second could not
    start until the model had finished, and the probe would wait its full patience in vain."""
    assert await overlap_of(Probed(context_of(folder), patience=60)) is True


async def test_the_probe_sees_a_decode_that_waits_for_the_slot(folder: Path) -> None:
    """The probe's counter-check: with every step inside the slot it finds no overlap."""
    assert await overlap_of(ProbedInTheSlot(context_of(folder), patience=1)) is False


def wait_for(condition: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.01)


def test_a_decode_waits_for_the_workers_budget(folder: Path) -> None:
    """The runtime decodes within the budget it is given (the service gives one to all its models)."""
    budget = DecodeBudget(1_000_000)
    runtime = Runtime(context_of(folder), threads=1, decode_budget=budget)
    runtime.load()
    done: list[Any] = []
    worker = threading.Thread(target=lambda: done.append(runtime.preprocess(images(photos()[0]), {})))
    with budget.hold(budget.capacity):
        worker.start()
        wait_for(lambda: budget.waiting == 1, "the decode waited for the budget")
        assert not done
    worker.join(60)
    assert done and done[0]["image"].shape == (1, 3, 224, 224)
    assert budget.held == 0 and budget.waiting == 0
