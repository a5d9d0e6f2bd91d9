"""Image preprocessing for EfficientNet-Lite0, shared by the model build and the service.

One function on purpose: the build's sanity check and the service must feed the network exactly the
same tensor, or the check proves nothing about what is served.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image


def preprocess_image(
    img: Image.Image,
    resize: int = 256,
    crop: int = 224,
    mean: float = 127.0,
    std: float = 128.0,
) -> np.ndarray[Any, np.dtype[np.float32]]:
    """Resize the short side to `resize`, centre-crop `crop` x `crop`, scale to (pixel - mean) / std.

    Returns a float32 array of shape (3, crop, crop) (CHW, RGB). EfficientNet-Lite was trained with
    TensorFlow-style scaling to about [-1, 1], not with the per-channel ImageNet mean/std.
    """
    if img.mode != "RGB":
        img = img.convert("RGB")
    width, height = img.size
    scale = resize / min(width, height)
    # At least `crop` pixels on each side, so that rounding can never leave the crop short.
    new_size = (max(crop, round(width * scale)), max(crop, round(height * scale)))
    img = img.resize(new_size, Image.Resampling.BILINEAR)
    left = (new_size[0] - crop) // 2
    top = (new_size[1] - crop) // 2
    img = img.crop((left, top, left + crop, top + crop))
    pixels = np.asarray(img, dtype=np.float32)
    chw = ((pixels - mean) / std).transpose(2, 0, 1)
    return np.ascontiguousarray(chw, dtype=np.float32)
