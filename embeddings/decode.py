"""The one image decoder of the product: format checks, size limits, EXIF orientation, RGB.

Pillow reads every header and decodes everything, except one case on the scan path: a JPEG asked for at about the
model's input size (`draft_size`) is decoded by libjpeg-turbo through simplejpeg, which scales in the DCT by any
factor n/8 (a 640 px photo decodes to 240 px for a 224 px model) where Pillow's draft mode offers only 1/2, 1/4, 1/8
(320 px). The smaller decode leaves fewer pixels to the resize that follows and to the perceptual hash (see
benchmarks/README.md, section "Served throughput", table "What changed on 2026-11-30").
Whatever simplejpeg cannot take (CMYK, a recoverable error, a broken stream) goes through Pillow, which decides.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
import simplejpeg
from PIL import Image, ImageOps, UnidentifiedImageError

from embeddings.errors import ImageRejected

SUPPORTED_FORMATS = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}


@dataclass(frozen=True)
class ImageLimits:
    """Bounds that protect the service from oversized inputs and decompression bombs."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image
    sha256: str
    format: str
    width: int
    height: int

    @property
    def media_type(self) -> str:
        return SUPPORTED_FORMATS[self.format]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decode_image(data: bytes, limits: ImageLimits, draft_size: int | None = None) -> DecodedImage:
    """Decode JPEG/PNG/WebP bytes to an upright RGB image, refusing what breaks `limits`.

    `draft_size` lets JPEG decode straight to the smallest DCT scale that still covers the model input.
    Raises ImageRejected with the HTTP status that fits the problem.
    """
    if not data:
        raise ImageRejected("empty file", 400)
    if len(data) > limits.max_bytes:
        raise ImageRejected(f"image is {len(data)} bytes, the limit is {limits.max_bytes}", 413)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        if isinstance(exc, UnidentifiedImageError):
            raise ImageRejected("file is not a decodable image (JPEG, PNG or WebP expected)", 400) from exc
        raise ImageRejected(f"image has too many pixels: {exc}", 413) from exc
    except (OSError, SyntaxError, ValueError) as exc:  # e.g. a truncated WebP fails while its header is read
        raise ImageRejected(f"image data is corrupt or truncated: {exc}", 400) from exc
    fmt = image.format or ""
    if fmt not in SUPPORTED_FORMATS:
        raise ImageRejected(f"unsupported image format {fmt or 'unknown'}: use JPEG, PNG or WebP", 415)
    if getattr(image, "n_frames", 1) > 1 and fmt != "MPO":  # MPO: phone JPEGs with a depth map; frame 0 is the photo
        raise ImageRejected("animated or multi-frame images are not accepted: send a still photo", 415)
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageRejected(f"image is {width}x{height} pixels, the limit is {limits.max_pixels} pixels", 413)
    try:
        pixels = _decode(data, image, fmt, draft_size)
        upright = ImageOps.exif_transpose(pixels) or pixels
        if upright.size != pixels.size:
            # EXIF orientation 5-8 turned the image: report the upright width and height.
            width, height = height, width
        rgb = to_rgb(upright)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageRejected(f"image data is corrupt or truncated: {exc}", 400) from exc
    return DecodedImage(image=rgb, sha256=sha256_hex(data), format=fmt, width=width, height=height)


def _decode(data: bytes, image: Image.Image, fmt: str, draft_size: int | None) -> Image.Image:
    """The pixels of the opened `image`, as stored (before EXIF orientation); a JPEG asked for at about `draft_size`
    decoded at the finest DCT scale that covers it (see the module docstring)."""
    if draft_size and fmt in ("JPEG", "MPO"):
        if image.mode in ("RGB", "L"):
            scaled = _scaled_jpeg(data, draft_size)
            if scaled is not None:
                scaled.info = dict(image.info)  # EXIF and the rest of the header, for exif_transpose
                return scaled
        image.draft("RGB", (draft_size, draft_size))
    image.load()
    return image


def _scaled_jpeg(data: bytes, min_side: int) -> Image.Image | None:
    """An RGB image decoded at the smallest DCT scale n/8 whose sides are all >= `min_side`; None when simplejpeg
    refuses the stream (a recoverable error, an unsupported colour space): Pillow then decodes it and decides."""
    try:
        pixels: np.ndarray = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=min_side, min_width=min_side)
    except (ValueError, RuntimeError):
        return None
    return Image.fromarray(pixels, "RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB, compositing transparency on white and scaling 16-bit data."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits instead of clipping at 255.
        scale = 1 / 257 if image.mode.startswith("I;16") else 1 / 65793
        image = image.point(lambda v: v * scale).convert("L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")
