"""ImageNet runner on ONNX Runtime: the `imagenet-onnx` artifact (see export_imagenet_onnx.py).

Decoding, preprocessing and the response are the torch runner's; only the network differs, and the
export's parity check (recorded in its manifest) bounds how much.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from modelgate_core.artifacts import Manifest
from modelgate_core.onnx_session import create_session
from vision_service.runners import ImageNetRunner


class OnnxImageNetRunner(ImageNetRunner):
    """EfficientNet-Lite0 exported to ONNX; `torch_threads` sets ORT's intra-op threads."""

    def load(self, model_dir: Path, manifest: Manifest) -> None:
        # As the torch runner: Pillow's process-wide bomb check must not refuse what our limit allows.
        if Image.MAX_IMAGE_PIXELS is not None and self.max_pixels > Image.MAX_IMAGE_PIXELS:
            Image.MAX_IMAGE_PIXELS = self.max_pixels
        extra = manifest.extra
        labels = json.loads((model_dir / str(extra["labels_file"])).read_text(encoding="utf-8"))
        self.labels = [str(label) for label in labels]
        self.crop = int(extra["input_size"])
        self.resize = int(extra["resize"])
        self.mean = float(extra["mean"])
        self.std = float(extra["std"])
        self.input_name = str(extra["input_name"])
        self.session: Any = create_session(model_dir / str(extra["onnx_file"]), self.torch_threads)
        # One warm-up pass (also a shape check), so the first request does not pay for lazy set-up.
        out = self.session.run(None, {self.input_name: np.zeros((1, 3, self.crop, self.crop), np.float32)})[0]
        if out.shape[-1] != len(self.labels):
            raise ValueError(
                f"model outputs {out.shape[-1]} classes but {len(self.labels)} labels were given"
            )

    def predict(self, batch: Sequence[np.ndarray[Any, Any]]) -> Sequence[np.ndarray[Any, Any]]:
        logits = self.session.run(None, {self.input_name: np.stack(batch).astype(np.float32, copy=False)})[0]
        exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return list(exp / exp.sum(axis=-1, keepdims=True))
