"""Image transforms: marketplace-photo augmentations for training, and exactly the serving preprocessing for evaluation."""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2

from embeddings.preprocess import PreprocessSpec, to_model_input

Transform = Callable[[Image.Image], torch.Tensor]
_INTERPOLATION = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}


def train_transform(spec: PreprocessSpec) -> Transform:
    """Random crops, flips, small rotations, colour jitter, blur and JPEG re-compression, then the model's normalisation.

    The photos seen at serving time are listing photos: re-framed, mirrored, re-lit, re-compressed and sometimes
    slightly out of focus or tilted. The crop keeps at least 40% of the photo so the product stays recognisable.
    """
    interpolation = _INTERPOLATION.get(spec.interpolation, InterpolationMode.BICUBIC)
    pipeline = v2.Compose(
        [
            v2.PILToTensor(),
            v2.RandomResizedCrop(spec.size, scale=(0.4, 1.0), ratio=(0.75, 1.333), interpolation=interpolation, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.RandomRotation(12, interpolation=InterpolationMode.BILINEAR)], p=0.3),
            v2.RandomApply([v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.25, hue=0.03)], p=0.8),
            v2.RandomGrayscale(p=0.05),
            v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.5))], p=0.2),
            v2.RandomApply([v2.JPEG((35, 95))], p=0.5),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(spec.mean), list(spec.std)),
        ]
    )

    def apply(image: Image.Image) -> torch.Tensor:
        out: torch.Tensor = pipeline(image)
        return out

    return apply


def eval_transform(spec: PreprocessSpec) -> Transform:
    """The serving preprocessing (embeddings.preprocess): shorter side to `spec.size`, centre crop, mean/std."""

    def apply(image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(to_model_input([image], spec)[0])

    return apply
