"""The EfficientNet-Lite0 network, built from code and filled with the artifact's weights."""

from __future__ import annotations

from pathlib import Path

import torch
from efficientnet_lite_pytorch import EfficientNet

ARCH = "efficientnet-lite0"


def build_efficientnet() -> torch.nn.Module:
    """An untrained EfficientNet-Lite0 with 1000 ImageNet classes (weights are loaded separately)."""
    model: torch.nn.Module = EfficientNet.from_name(ARCH, num_classes=1000)
    return model


def load_efficientnet(weights_path: Path) -> torch.nn.Module:
    """EfficientNet-Lite0 with the state_dict at `weights_path` loaded strictly, in eval mode.

    `weights_only=True` because a pickle can run code: the file holds tensors and nothing else.
    Strict loading makes a weights file for another architecture fail here, not predict garbage.
    """
    model = build_efficientnet()
    state_dict = torch.load(weights_path, map_location="cpu", weights_only=True)
    model.load_state_dict(state_dict, strict=True)
    model.eval()
    return model
