"""Model input pixels: the centre square resampled once (torch's antialiased filters), close to Pillow's own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from embeddings import ImageLimits, decode_image
from embeddings.preprocess import PreprocessSpec, resize_and_crop, to_pixels
from tests import imaging


def pillow_centre_square(image: Image.Image, size: int, resample: Image.Resampling) -> np.ndarray:
    """Pillow's resize of the same integer centre square: the reference the fast path must follow."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    box = (left, top, left + side, top + side)
    return np.asarray(image.resize((size, size), resample, box=box, reducing_gap=3.0))


def level_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16))


@pytest.mark.parametrize(
    ("size", "interpolation", "resample"),
    [
        ((240, 240), "bicubic", Image.Resampling.BICUBIC),  # a 640 px JPEG decoded at 3/8, to 224
        ((300, 213), "bicubic", Image.Resampling.BICUBIC),  # landscape: the centre square only
        ((150, 190), "bilinear", Image.Resampling.BILINEAR),  # portrait, scaled up
    ],
)
def test_resampling_follows_pillow_within_a_level(size: tuple[int, int], interpolation: str, resample: Image.Resampling) -> None:
    image = imaging.noise_image(7, size).filter(ImageFilter.GaussianBlur(2))
    ours = resize_and_crop(image, 224, interpolation)
    assert ours.shape == (224, 224, 3) and ours.dtype == np.uint8 and ours.flags["C_CONTIGUOUS"]
    diff = level_difference(ours, pillow_centre_square(image, 224, resample))
    assert diff.mean() < 0.02 and np.percentile(diff, 99.9) <= 3  # rounding: a level here and there


def test_a_large_image_is_reduced_first_and_still_matches() -> None:
    # 2,000 px is over three times 224: a box reduce by an integer factor, then the antialiased filter
    image = imaging.noise_image(3, (2000, 1500)).filter(ImageFilter.GaussianBlur(6))
    diff = level_difference(resize_and_crop(image, 224), pillow_centre_square(image, 224, Image.Resampling.BICUBIC))
    assert diff.mean() < 0.5 and np.percentile(diff, 99) <= 2


def test_real_photo_pixels_match_pillow(sneakers_dir: Path) -> None:
    path = sorted((sneakers_dir / "images").rglob("*.jpg"))[0]
    decoded = decode_image(path.read_bytes(), ImageLimits(), draft_size=224)  # the scan path's scaled decode
    ours = resize_and_crop(decoded.image, 224)
    diff = level_difference(ours, pillow_centre_square(decoded.image, 224, Image.Resampling.BICUBIC))
    assert diff.mean() < 0.02 and np.percentile(diff, 99.9) <= 1


def test_modes_other_than_rgb_and_exact_sizes() -> None:
    spec = PreprocessSpec(size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    grey = imaging.noise_image(1, (40, 40), mode="L")
    exact = imaging.noise_image(2, (32, 32))
    batch = to_pixels([grey, exact], spec)
    assert batch.shape == (2, 32, 32, 3) and batch.dtype == np.uint8
    assert np.array_equal(batch[1], np.asarray(exact))  # already the input size: the pixels as they are
    assert np.array_equal(batch[0][..., 0], batch[0][..., 2])  # grey stays grey


def test_transparency_is_composited_on_white_as_the_decoder_does() -> None:
    clear = Image.new("RGBA", (50, 50), (0, 0, 0, 0))
    assert resize_and_crop(clear, 32).tolist() == np.full((32, 32, 3), 255, dtype=np.uint8).tolist()
