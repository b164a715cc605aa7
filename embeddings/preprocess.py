"""Turns decoded RGB images into model input: uint8 pixels for the runtimes, normalised floats for training.

Serving hands the runtimes `(n, size, size, 3)` uint8 batches: the model's normalisation (mean, std, NHWC to NCHW)
runs inside the model (`embeddings.runtimes.PixelInput`), in the ONNX graph or on the GPU, instead of in numpy per
photo; a uint8 batch is also a quarter of the bytes to copy to a GPU.
"""

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
    """The centre square of the image, scaled to `size` x `size` in one resampling pass (shorter side to `size`).

    Resampling only the centre square (Pillow's `box`) skips the pixels a crop after the resize would throw away.
    """
    width, height = image.size
    if (width, height) == (size, size):
        return image
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return image.resize(
        (size, size),
        _RESAMPLE.get(interpolation, Image.Resampling.BICUBIC),
        box=(left, top, left + side, top + side),
        reducing_gap=3.0,
    )


def to_pixels(images: Sequence[Image.Image], spec: PreprocessSpec) -> np.ndarray:
    """Stack images into the `(n, size, size, 3)` uint8 batch the runtimes take (see the module docstring)."""
    batch = np.empty((len(images), spec.size, spec.size, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        batch[i] = np.asarray(resize_and_crop(image, spec.size, spec.interpolation))
    return batch


def normalise(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 NHWC pixels to the float32 NCHW batch normalised with the model's mean and std (for training in torch)."""
    mean = np.asarray(spec.mean, dtype=np.float32) * 255.0
    scale = 1.0 / (np.asarray(spec.std, dtype=np.float32) * 255.0)
    out = (pixels.astype(np.float32) - mean) * scale
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def to_model_input(images: Sequence[Image.Image], spec: PreprocessSpec) -> np.ndarray:
    """Stack images into a float32 NCHW batch normalised with the model's mean and std (what training feeds torch)."""
    return normalise(to_pixels(images, spec), spec)
