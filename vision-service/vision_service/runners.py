"""ImageNet runner: EfficientNet-Lite0 (PyTorch) over uploaded JPEG, PNG or WebP images.

Everything here runs in worker threads (see `ServedModel`), including decoding: untrusted bytes are
identified by their content, never by the declared content type, and refused with a 4xx before they
can cost much memory or time.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from modelgate_core.artifacts import Manifest
from modelgate_core.errors import PayloadTooLarge, Unprocessable, UnsupportedMediaType
from modelgate_core.model import ModelRunner
from modelgate_core.schemas.vision import TOP_K_MAX, ClassScore
from vision_service.network import load_efficientnet
from vision_service.preprocess import preprocess_image

# Pillow's names for the formats accepted; only their decoders ever see an upload.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP")
ACCEPTED_NAMES = "JPEG, PNG or WebP"

# A few well-known signatures, only to say what an unsupported upload looks like.
_SIGNATURES = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"%PDF", "PDF"),
    (b"\x00\x00\x01\x00", "ICO"),
)

# Pillow raises these for damaged or truncated data, depending on the format and where it breaks.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError)

# Pillow's bomb check (Image.MAX_IMAGE_PIXELS, process-wide) warns above its limit and raises above twice
# it; make both errors. `decode_image` checks its own, configurable limit first; this is the backstop.
warnings.simplefilter("error", Image.DecompressionBombWarning)


def _describe(data: bytes) -> str:
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            return f"a {name} file"
    if data[4:8] == b"ftyp":
        return "an HEIC/AVIF or MP4 file"
    return "not a recognisable image"


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any mode to RGB; transparent pixels become white rather than whatever colour they hide."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def decode_image(data: bytes, max_pixels: int, draft_size: int | None = None) -> Image.Image:
    """Identify, size-check and decode one upload into an upright RGB image, or raise a 4xx error.

    With `draft_size`, a large JPEG is decoded at 1/2, 1/4 or 1/8 scale (in the DCT, cheap and
    clean) while both sides stay at least `draft_size`: a 12-megapixel photo decodes several times
    faster, into a fraction of the memory, and still reaches the network through the same resize.
    """
    if not data:
        raise Unprocessable("The uploaded file is empty")
    try:
        img = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        raise UnsupportedMediaType(
            f"Unsupported image: the upload is {_describe(data)}; send a {ACCEPTED_NAMES} image"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Only the header has been read: the dimensions alone are over the limit.
        raise PayloadTooLarge(f"Image dimensions exceed the limit of {max_pixels:,} pixels") from None
    except _DECODE_ERRORS as exc:
        raise Unprocessable(f"The {ACCEPTED_NAMES} image could not be read: {exc}") from None
    width, height = img.size
    # Only the header has been read so far: refuse before decoding anything.
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"Image is {width}x{height} ({width * height:,} pixels); the limit is {max_pixels:,} pixels"
        )
    if width < 1 or height < 1:
        raise Unprocessable(f"Image has no pixels ({width}x{height})")
    try:
        if draft_size and img.format == "JPEG":
            img.draft(None, (draft_size, draft_size))
        img.load()
        return _to_rgb(ImageOps.exif_transpose(img))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PayloadTooLarge(f"Image dimensions exceed the limit of {max_pixels:,} pixels") from None
    except _DECODE_ERRORS as exc:
        # Truncated or corrupt pixel data: the header was fine, the rest is not.
        raise Unprocessable(
            f"The {img.format} image is damaged or truncated and could not be decoded: {exc}"
        ) from None


class ImageNetRunner(ModelRunner[bytes, list[ClassScore]]):
    """EfficientNet-Lite0 over the 1000 ImageNet classes; outputs the top classes, best first."""

    def __init__(self, *, max_pixels: int, torch_threads: int) -> None:
        self.max_pixels = max_pixels
        self.torch_threads = torch_threads

    def load(self, model_dir: Path, manifest: Manifest) -> None:
        torch.set_num_threads(self.torch_threads)
        # Pillow's own bomb check is process-wide and only a backstop for `decode_image`'s: never let
        # it refuse what this runner's limit allows.
        if Image.MAX_IMAGE_PIXELS is not None and self.max_pixels > Image.MAX_IMAGE_PIXELS:
            Image.MAX_IMAGE_PIXELS = self.max_pixels
        extra = manifest.extra
        labels = json.loads((model_dir / str(extra["labels_file"])).read_text(encoding="utf-8"))
        self.labels: list[str] = [str(label) for label in labels]
        # The same preprocessing settings the build evaluated the model with.
        self.crop = int(extra["input_size"])
        self.resize = int(extra["resize"])
        self.mean = float(extra["mean"])
        self.std = float(extra["std"])
        self.model: torch.nn.Module = load_efficientnet(model_dir / "weights.pt")
        # One warm-up pass (also a shape check), so the first request does not pay for lazy set-up.
        with torch.inference_mode():
            out = self.model(torch.zeros(1, 3, self.crop, self.crop))
        if out.shape[-1] != len(self.labels):
            raise ValueError(
                f"model outputs {out.shape[-1]} classes but {len(self.labels)} labels were given"
            )

    def preprocess(self, item: bytes) -> np.ndarray[Any, np.dtype[np.float32]]:
        img = decode_image(item, self.max_pixels, draft_size=2 * self.resize)
        return preprocess_image(img, resize=self.resize, crop=self.crop, mean=self.mean, std=self.std)

    def predict(self, batch: Sequence[np.ndarray[Any, Any]]) -> Sequence[np.ndarray[Any, Any]]:
        inputs = torch.stack([torch.from_numpy(np.ascontiguousarray(x)) for x in batch])
        with torch.inference_mode():
            probabilities = torch.softmax(self.model(inputs), dim=-1)
        return list(probabilities.numpy())

    def postprocess(self, raw: np.ndarray[Any, Any]) -> list[ClassScore]:
        best = np.argsort(raw)[::-1][:TOP_K_MAX]
        return [
            ClassScore(label=self.labels[i], class_id=int(i), score=round(float(raw[i]), 6)) for i in best
        ]
