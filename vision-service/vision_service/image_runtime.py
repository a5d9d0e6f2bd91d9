"""`image-classification`: an image classifier (ONNX graph or torch network) over the Open Inference Protocol.

Uploads are checked by the vision service's own `open_image` from their header (413/415/422 for what
is too large, not an image, or damaged), decoded by `load_image` within the worker's `DecodeBudget`,
then resized, centre-cropped and scaled by `preprocess_image`, as the build evaluated the model. All of
it runs in `preprocess`, which the served version runs in a worker thread outside the model's slot:
one request's image decodes while the model runs another's. The answer is every class's probability
and the `top_k` best.

    {"runtime": "image-classification",
     "parameters": {"onnx_file": "model.onnx", "labels_file": "labels.json", "resize": 256, "crop": 224,
                    "mean": 127.0, "std": 128.0, "layout": "NCHW",
                    "torch_weights": "weights.pt", "torch_architecture": "efficientnet-lite0"}}
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from modelgate_core.errors import BadRequest
from modelgate_core.oip.types import Parameters, TensorSpec
from modelgate_core.onnx_session import create_session
from modelgate_core.repository.runtime import (
    ModelContext,
    ModelRuntime,
    Tensors,
    check_fixed_tensors,
    declared_or,
)
from vision_service.decode import DecodeBudget, load_image, open_image
from vision_service.network import ARCH, load_efficientnet
from vision_service.preprocess import preprocess_image

Backend = Literal["onnx", "torch"]
Layout = Literal["NCHW", "NHWC"]
FloatArray = np.ndarray[Any, np.dtype[np.float32]]

DEFAULT_TOP_K = 5
# The largest image accepted by default, in pixels: 4096 x 4096 (16.8 megapixels). The network sees
# 224 x 224 (50 thousand pixels) of a 256-pixel resize, so anything larger only costs memory: at this
# limit a PNG or WebP decodes into about 68 MiB (128 MiB with an alpha channel), a progressive JPEG
# into about 50 MiB, a baseline JPEG (decoded at reduced scale) into a few. It still takes the photos
# cameras and phones save by default (12 MP); a 39-megapixel PNG, which fits in a 10 MB upload and
# would decode into 150 MiB (300 MiB with an alpha channel), is refused from its header.
DEFAULT_MAX_PIXELS = 4096 * 4096
# Limit-size images one worker decodes at once (its `DecodeBudget`; smaller ones share it, many at a
# time). Decoding is CPU-bound and a worker has about one core: more at once would finish no sooner,
# only hold more memory. Two workers then hold at most ~0.5 GiB of pixels between them, worst case.
DECODES_AT_ONCE = 2

# Network builders for `torch_architecture`: a state_dict alone does not say what network it fills.
ARCHITECTURES: dict[str, Callable[[Path], torch.nn.Module]] = {ARCH: load_efficientnet}

IMAGE_INPUT = TensorSpec(name="image", datatype="BYTES", shape=[-1], parameters={"content_type": "base64"})


def _positive_int(parameters: Parameters, name: str, default: int) -> int:
    value = parameters.get(name, default)
    # bool is an int subclass: `true` in a settings file is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"parameters.{name} must be a positive integer, got {value!r}")
    return value


def _channel_values(parameters: Parameters, name: str, default: float) -> float | tuple[float, float, float]:
    """One number for all channels, or one per RGB channel."""
    value = parameters.get(name, default)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if (
        isinstance(value, list)
        and len(value) == 3
        and all(isinstance(x, int | float) and not isinstance(x, bool) for x in value)
    ):
        return (float(value[0]), float(value[1]), float(value[2]))
    raise ValueError(f"parameters.{name} must be a number or a list of 3 numbers (R, G, B), got {value!r}")


def _softmax(logits: np.ndarray[Any, Any]) -> FloatArray:
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probabilities: FloatArray = (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)
    return probabilities


class ImageClassificationRuntime(ModelRuntime):
    """`image` BYTES [-1] (encoded JPEG/PNG/WebP) in; `probabilities` and the top-k classes out."""

    runtime = "image-classification"

    def __init__(
        self,
        context: ModelContext,
        *,
        backend: Backend = "onnx",
        threads: int = 1,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        decode_budget: DecodeBudget | None = None,
    ) -> None:
        super().__init__(context)
        self.requested_backend: Backend = backend
        self.backend: Backend = backend
        self.threads = threads
        self.max_pixels = max_pixels
        # The service passes one budget for all its models, so that the bound holds per worker.
        self.decode_budget = decode_budget or DecodeBudget(DECODES_AT_ONCE * max_pixels)
        self.labels: list[str] = []
        self.resize = 256
        self.crop = 224
        self.mean: float | tuple[float, float, float] = 127.0
        self.std: float | tuple[float, float, float] = 128.0
        self.layout: Layout = "NCHW"
        self._torchscript = False
        self._session: Any = None
        self._input_name = ""
        self._output_name = ""
        self._model: Any = None

    # The base declares a ClassVar; here the platform is the backend that loaded, known after `load`.
    @property
    def platform(self) -> str:  # type: ignore[override]
        if self.backend == "onnx":
            return "onnxruntime_onnx"
        return "pytorch_libtorch" if self._torchscript else "pytorch_torch"

    def load(self) -> None:
        parameters = self.context.parameters
        extra = self.context.manifest.extra if self.context.manifest else {}
        self.resize = _positive_int(parameters, "resize", int(extra.get("resize", 256)))
        self.crop = _positive_int(parameters, "crop", int(extra.get("input_size", 224)))
        self.mean = _channel_values(parameters, "mean", float(extra.get("mean", 127.0)))
        self.std = _channel_values(parameters, "std", float(extra.get("std", 128.0)))
        if 0.0 in (self.std if isinstance(self.std, tuple) else (self.std,)):
            raise ValueError("parameters.std must not be 0")
        layout = parameters.get("layout", "NCHW")
        if layout not in ("NCHW", "NHWC"):
            raise ValueError(f"parameters.layout must be 'NCHW' or 'NHWC', got {layout!r}")
        self.layout = layout
        self.labels = self._read_labels(parameters)
        # Pillow's own bomb check is process-wide and only a backstop for `open_image`'s: never let
        # it refuse what this runtime's limit allows.
        if Image.MAX_IMAGE_PIXELS is not None and self.max_pixels > Image.MAX_IMAGE_PIXELS:
            Image.MAX_IMAGE_PIXELS = self.max_pixels
        self._load_network(parameters)
        self.inputs, self.outputs = declared_or(self.context, [IMAGE_INPUT], self._derived_outputs())
        self._check_declared()
        # One warm-up pass, so that the first request does not pay for lazy set-up; it also checks
        # that the network has one output per label.
        shape = (1, 3, self.crop, self.crop) if self.layout == "NCHW" else (1, self.crop, self.crop, 3)
        warm = self.predict({"image": np.zeros(shape, np.float32)})["probabilities"]
        if warm.shape != (1, len(self.labels)):
            raise ValueError(
                f"the network outputs shape {list(warm.shape)} for one image, "
                f"but there are {len(self.labels)} labels"
            )

    def _read_labels(self, parameters: Parameters) -> list[str]:
        labels: object = parameters.get("labels")
        if labels is None:
            labels_file = parameters.get("labels_file")
            if not labels_file:
                raise ValueError("parameters.labels or parameters.labels_file is required")
            path = self.context.folder / str(labels_file)
            try:
                labels = json.loads(path.read_text(encoding="utf-8"))
            except FileNotFoundError as exc:
                raise FileNotFoundError(
                    f"parameters.labels_file {labels_file!r} is not in the folder"
                ) from exc
            except (OSError, ValueError) as exc:
                raise ValueError(f"cannot read {labels_file}: {exc}") from exc
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
            raise ValueError("the labels must be a non-empty JSON list of strings")
        return list(labels)

    def _file(self, parameters: Parameters, name: str) -> Path:
        path = self.context.folder / str(parameters[name])
        if not path.is_file():
            raise FileNotFoundError(f"parameters.{name} {parameters[name]!r} is not in the folder")
        return path

    def _load_network(self, parameters: Parameters) -> None:
        has_torch = bool(parameters.get("torch_weights") or parameters.get("torchscript_file"))
        if self.requested_backend == "onnx" and parameters.get("onnx_file"):
            self.backend = "onnx"
            self._load_onnx(self._file(parameters, "onnx_file"))
        elif has_torch:
            self.backend = "torch"
            self._load_torch(parameters)
        elif self.requested_backend == "onnx":
            raise ValueError(
                "the onnx backend needs parameters.onnx_file (or, for torch, torch_weights + "
                "torch_architecture, or torchscript_file)"
            )
        else:
            raise ValueError(
                "the torch backend needs parameters.torch_weights + torch_architecture, or torchscript_file"
            )

    def _load_onnx(self, path: Path) -> None:
        self._session = create_session(path, self.threads)
        graph_inputs = self._session.get_inputs()
        if len(graph_inputs) != 1:
            raise ValueError(f"{path.name} takes {len(graph_inputs)} inputs; an image classifier takes one")
        self._input_name = str(graph_inputs[0].name)
        self._output_name = str(self._session.get_outputs()[0].name)

    def _load_torch(self, parameters: Parameters) -> None:
        torch.set_num_threads(self.threads)
        if parameters.get("torchscript_file"):
            self._torchscript = True
            path = self._file(parameters, "torchscript_file")
            self._model = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
            self._model.eval()
            return
        architecture = parameters.get("torch_architecture")
        if architecture not in ARCHITECTURES:
            raise ValueError(
                f"parameters.torch_architecture must be one of {sorted(ARCHITECTURES)} with torch_weights, "
                f"got {architecture!r}"
            )
        self._model = ARCHITECTURES[str(architecture)](self._file(parameters, "torch_weights"))

    def _derived_outputs(self) -> list[TensorSpec]:
        return [
            TensorSpec(name="probabilities", datatype="FP32", shape=[-1, len(self.labels)]),
            TensorSpec(name="label", datatype="BYTES", shape=[-1, -1]),
            TensorSpec(name="class_id", datatype="INT64", shape=[-1, -1]),
            TensorSpec(name="score", datatype="FP32", shape=[-1, -1]),
        ]

    def _check_declared(self) -> None:
        check_fixed_tensors(self.runtime, self.inputs, IMAGE_INPUT, self.outputs, self._derived_outputs())

    def top_k(self, parameters: Parameters) -> int:
        """The request's `top_k` (default 5, or every class if there are fewer), or `BadRequest`."""
        default = min(DEFAULT_TOP_K, len(self.labels))
        value = parameters.get("top_k", default)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= len(self.labels):
            raise BadRequest(f"top_k must be an integer from 1 to {len(self.labels)}, got {value!r}")
        return value

    def preprocess(self, inputs: Tensors, parameters: Parameters) -> Tensors:
        self.top_k(parameters)  # refuse a bad top_k before any decoding
        images = inputs["image"].reshape(-1)
        if images.size == 0:
            raise BadRequest("image holds no images")
        rows = [self._prepare(element, row) for row, element in enumerate(images)]
        return {"image": np.stack(rows)}

    def _prepare(self, element: object, row: int) -> FloatArray:
        if not isinstance(element, bytes):
            raise BadRequest(f"image[{row}] must be the bytes of an image, got {type(element).__name__}")
        header = open_image(element, self.max_pixels)
        width, height = header.size
        # Held until the full-size image has been resized away: only the 224-pixel crop outlives it.
        with self.decode_budget.hold(width * height):
            img = load_image(header, self.max_pixels, draft_size=2 * self.resize)
            if isinstance(self.mean, float) and isinstance(self.std, float):
                chw = preprocess_image(img, resize=self.resize, crop=self.crop, mean=self.mean, std=self.std)
            else:
                # Per-channel scaling after an identity one, which leaves the pixels exactly as they were.
                pixels = preprocess_image(img, resize=self.resize, crop=self.crop, mean=0.0, std=1.0)
                mean = np.asarray(self.mean, np.float32).reshape(-1, 1, 1)
                std = np.asarray(self.std, np.float32).reshape(-1, 1, 1)
                chw = ((pixels - mean) / std).astype(np.float32)
            del img, header  # freed before the budget is given back
        return chw if self.layout == "NCHW" else np.ascontiguousarray(chw.transpose(1, 2, 0))

    def predict(self, batch: Tensors) -> Tensors:
        images = np.ascontiguousarray(batch["image"], dtype=np.float32)
        if self.backend == "onnx":
            probabilities = _softmax(self._session.run([self._output_name], {self._input_name: images})[0])
        else:
            with torch.inference_mode():
                logits = self._model(torch.from_numpy(images))
            if not isinstance(logits, torch.Tensor):
                raise ValueError(f"the torch network returned {type(logits).__name__}, not a tensor")
            probabilities = torch.softmax(logits.float(), dim=-1).numpy()
        return {"probabilities": probabilities}

    def postprocess(self, outputs: Tensors, parameters: Parameters) -> Tensors:
        probabilities = np.asarray(outputs["probabilities"], dtype=np.float32)
        k = self.top_k(parameters)
        best = np.argsort(-probabilities, axis=-1, kind="stable")[:, :k]
        labels = np.array([[self.labels[i].encode() for i in row] for row in best], dtype=object)
        everything: dict[str, np.ndarray[Any, Any]] = {
            "probabilities": probabilities,
            "label": labels.reshape(best.shape),
            "class_id": best.astype(np.int64),
            "score": np.take_along_axis(probabilities, best, axis=-1),
        }
        return {spec.name: everything[spec.name] for spec in self.outputs}

    def unload(self) -> None:
        self._session = None
        self._model = None

    def artifact_version(self) -> str | None:
        """The version of the artifact that answers: an ONNX export's own, or the torch weights' parent."""
        return self.exported_or_parent_version(answers_from_parent=self.backend == "torch")

    def describe(self) -> Parameters:
        return {
            "backend": self.backend,
            "n_classes": len(self.labels),
            "resize": self.resize,
            "crop": self.crop,
            "layout": self.layout,
            "artifact_version": self.artifact_version(),
        }
