"""Turns decoded RGB images into the normalised float arrays a model expects."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


@dataclass(frozen=True)
class PreprocessSpec:
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"

    def as_dict(self) -> dict[str, object]:
        return {"size": self.size, "mean": list(self.mean), "std": list(self.std), "interpolation": self.interpolation}


def resize_and_crop(image: Image.Image, size: int, interpolation: str = "bicubic") -> Image.Image:
    """Resize the shorter side to `size`, then take the centre square."""
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), _RESAMPLE.get(interpolation, Image.Resampling.BICUBIC), reducing_gap=3.0)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def to_model_input(images: Sequence[Image.Image], spec: PreprocessSpec) -> np.ndarray:
    """Stack images into a float32 NCHW batch normalised with the model's mean and std."""
    batch = np.empty((len(images), 3, spec.size, spec.size), dtype=np.float32)
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(3, 1, 1) * 255.0
    std = np.asarray(spec.std, dtype=np.float32).reshape(3, 1, 1) * 255.0
    for i, image in enumerate(images):
        pixels = np.asarray(resize_and_crop(image, spec.size, spec.interpolation), dtype=np.float32)
        batch[i] = (pixels.transpose(2, 0, 1) - mean) / std
    return batch
