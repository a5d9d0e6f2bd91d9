"""Export the ImageNet artifact's EfficientNet-Lite0 to ONNX: the `imagenet-onnx` artifact.

A derived build (see scripts/build_models.py): it reads the published `imagenet` artifact and never
changes it. The network is traced with a dynamic batch axis, checked with onnx's checker, and compared
with torch on held-out inputs (the two sanity photos, their mirror images and seeded random tensors,
as one batch and one by one); the largest differences and the top-5 agreement go into the manifest,
and the export is refused if they exceed the tolerances below.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

from modelgate_core.artifacts import Manifest, hash_files, utc_now

NAME = "imagenet-onnx"
PARENT = "imagenet"
LIBRARIES = ("torch", "onnx", "onnxruntime", "numpy", "pillow", "efficientnet-lite-pytorch")
HERE = Path(__file__).resolve().parent
ASSETS = HERE.parent / "tests" / "assets"
# Held-out photos and the classes one of which must be in the top 5 (967 espresso; 281-285 cats).
SANITY = {"coffee.jpg": {967}, "chelsea.jpg": {281, 282, 283, 284, 285}}
OPSET = 17
ONNX_FILE = "model.onnx"
INPUT_NAME, OUTPUT_NAME = "pixels", "logits"
# fp32 through other kernels: logits agree to ~1e-5; anything near these means a broken export.
MAX_LOGIT_DIFF = 1e-3
MAX_PROB_DIFF = 1e-4


def inputs() -> list[Path]:
    """The network's code, the preprocessing and the held-out photos (the weights come via the parent)."""
    return [
        HERE / "vision_service" / "network.py",
        HERE / "vision_service" / "preprocess.py",
        *(ASSETS / name for name in SANITY),
    ]


def build(out_dir: Path, progress: Callable[[str], None], parent_dir: Path, parent: Manifest) -> Manifest:
    """Write `model.onnx` and a copy of the labels; returns the manifest (version: the variant marker)."""
    import numpy as np
    import onnx
    import torch
    from PIL import Image, ImageOps

    from modelgate_core.onnx_session import create_session
    from vision_service.network import load_efficientnet
    from vision_service.preprocess import preprocess_image

    extra = parent.extra
    crop = int(extra["input_size"])
    model = load_efficientnet(parent_dir / "weights.pt")
    progress(f"exporting {parent.name} {parent.version} to ONNX (opset {OPSET}) ...")
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of torch.export's, which needs onnxscript;
        # this plain CNN traces exactly, and the parity check below proves it.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, crop, crop),),
            str(out_dir / ONNX_FILE),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
        )
    onnx.checker.check_model(onnx.load(str(out_dir / ONNX_FILE)))
    shutil.copy2(parent_dir / str(extra["labels_file"]), out_dir / str(extra["labels_file"]))

    # Held-out inputs: the photos as the service sees them, mirrored, and seeded noise in the input range.
    photos, classes = [], []
    for name, expected_classes in SANITY.items():
        with Image.open(ASSETS / name) as img:
            rgb = img.convert("RGB")
        for variant in (rgb, ImageOps.mirror(rgb)):
            photos.append(
                preprocess_image(
                    variant, int(extra["resize"]), crop, float(extra["mean"]), float(extra["std"])
                )
            )
            classes.append(expected_classes)
    noise = np.random.default_rng(0).uniform(-1, 1, (4, 3, crop, crop)).astype(np.float32)
    batch = np.concatenate([np.stack(photos), noise])
    session = create_session(out_dir / ONNX_FILE, threads=torch.get_num_threads())
    with torch.inference_mode():
        expected = model(torch.from_numpy(batch)).numpy()
    got_batch = session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
    got_single = np.concatenate([session.run([OUTPUT_NAME], {INPUT_NAME: x[None]})[0] for x in batch])

    def softmax(x: np.ndarray) -> np.ndarray:  # type: ignore[type-arg]
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)  # type: ignore[no-any-return]

    logit_diff = float(max(np.abs(got_batch - expected).max(), np.abs(got_single - expected).max()))
    prob_diff = float(
        max(
            np.abs(softmax(got_batch) - softmax(expected)).max(),
            np.abs(softmax(got_single) - softmax(expected)).max(),
        )
    )
    # The five best classes, in order, per input: torch's, then ONNX's.
    top5 = [np.argsort(-logits, axis=-1)[:, :5].tolist() for logits in (expected, got_batch)]
    agreement = float(np.mean([a == b for a, b in zip(*top5, strict=True)]))
    # As the parent counts them: each original photo (not the mirrors) with its class in the top 5.
    sanity_hits = sum(
        bool(c & set(top)) for c, top in zip(classes[::2], top5[1][: len(classes) : 2], strict=True)
    )
    progress(
        f"parity on {len(batch)} held-out inputs: max |logit diff| {logit_diff:.2e}, "
        f"max |prob diff| {prob_diff:.2e}, top-5 identical {agreement:.0%}"
    )
    if logit_diff > MAX_LOGIT_DIFF or prob_diff > MAX_PROB_DIFF or agreement < 1:
        raise RuntimeError(f"ONNX export differs from torch: logits {logit_diff:.2e}, probs {prob_diff:.2e}")

    return Manifest(
        name=NAME,
        version="onnx",
        domain="vision",
        created=utc_now(),
        framework=(
            f"onnxruntime {version('onnxruntime')} (fp32, ONNX opset {OPSET}, "
            f"from torch {version('torch').split('+')[0]})"
        ),
        data_source=f"{parent.name} {parent.version} exported to ONNX; {parent.data_source}",
        metrics={
            **parent.metrics,
            "sanity_top5_hits": float(sanity_hits),
            "max_abs_diff_logits": logit_diff,
            "max_abs_diff_probs": prob_diff,
            "top5_agreement": agreement,
            "n_parity_inputs": float(len(batch)),
        },
        extra={
            **extra,
            "onnx_file": ONNX_FILE,
            "input_name": INPUT_NAME,
            "output_name": OUTPUT_NAME,
            "opset": OPSET,
            "precision": "fp32",
            "parent": {"name": parent.name, "version": parent.version},
        },
        files=hash_files(out_dir),
    )
