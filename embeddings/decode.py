"""The one image decoder of the product: format checks, size limits, EXIF orientation, RGB."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

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
        if draft_size and fmt in ("JPEG", "MPO"):
            image.draft("RGB", (draft_size, draft_size))
        image.load()
        upright = ImageOps.exif_transpose(image) or image
        if upright.size != image.size:
            # EXIF orientation 5-8 turned the image: report the upright width and height.
            width, height = height, width
        rgb = to_rgb(upright)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageRejected(f"image data is corrupt or truncated: {exc}", 400) from exc
    return DecodedImage(image=rgb, sha256=sha256_hex(data), format=fmt, width=width, height=height)


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
