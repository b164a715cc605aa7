"""Turns decoded RGB images into model input: uint8 pixels for the runtimes, normalised floats for training.

Serving hands the runtimes `(n, size, size, 3)` uint8 batches: the model's normalisation (mean, std, NHWC to NCHW)
runs inside the model (`embeddings.runtimes.PixelInput`), in the ONNX graph or on the GPU, instead of in numpy per
photo; a uint8 batch is also a quarter of the bytes to copy to a GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2.functional import InterpolationMode, resize

from embeddings.decode import to_rgb

_INTERPOLATIONS = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}
_REDUCING_GAP = 3


@dataclass(frozen=True)
class PreprocessSpec:
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"

    def as_dict(self) -> dict[str, object]:
        return {"size": self.size, "mean": list(self.mean), "std": list(self.std), "interpolation": self.interpolation}


def resize_and_crop(image: Image.Image, size: int, interpolation: str = "bicubic") -> np.ndarray:
    """The centre square of the image as `(size, size, 3)` uint8 pixels, scaled in one resampling pass.

    The resampling is torchvision's antialiased bicubic (or bilinear) on uint8 channels-last pixels, which follows
    Pillow's filters to within a level and runs several times faster than `Image.resize` on the scan path's decodes
    (see benchmarks/README.md, section "Served throughput", table "What changed on 2026-11-30"). Only the centre
    square is resampled. A square more than `_REDUCING_GAP` times the target is first shrunk by an integer factor
    with Pillow's box `reduce`, as `Image.resize(reducing_gap=3)` does.
    """
    rgb = to_rgb(image)  # the decoder's conversion: transparency on white, 16-bit scaled
    width, height = rgb.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    factor = side // (size * _REDUCING_GAP)
    if factor >= 2:
        square = np.asarray(rgb.reduce(factor, box=(left, top, left + side, top + side)))
    else:
        square = np.asarray(rgb)[top : top + side, left : left + side]
    if square.shape[:2] == (size, size):
        return np.ascontiguousarray(square)
    pixels = torch.from_numpy(np.array(square)).permute(2, 0, 1)  # a writable copy, as torch wants; CHW, channels last
    mode = _INTERPOLATIONS.get(interpolation, InterpolationMode.BICUBIC)
    resized = resize(pixels, [size, size], interpolation=mode, antialias=True)  # channels last in, channels last out
    return np.ascontiguousarray(resized.permute(1, 2, 0).numpy())


def to_pixels(images: Sequence[Image.Image], spec: PreprocessSpec) -> np.ndarray:
    """Stack images into the `(n, size, size, 3)` uint8 batch the runtimes take (see the module docstring)."""
    batch = np.empty((len(images), spec.size, spec.size, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        batch[i] = resize_and_crop(image, spec.size, spec.interpolation)
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
