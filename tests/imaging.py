"""Real image bytes for tests, generated with Pillow (no fixtures on disk)."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
from PIL import Image


def noise_image(seed: int = 0, size: tuple[int, int] = (96, 96), mode: str = "RGB") -> Image.Image:
    """A deterministic image with structure (a gradient) and per-seed noise, so every seed gives different bytes."""
    width, height = size
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=3)
    yy, xx = np.mgrid[0:height, 0:width]
    pixels = np.stack([(base[c] + (xx + yy * (c + 1)) * (c + 1)) % 256 for c in range(3)], axis=-1)
    pixels = (pixels + rng.integers(-40, 40, size=pixels.shape)).clip(0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB").convert(mode)


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def jpeg(seed: int = 0, size: tuple[int, int] = (96, 96), quality: int = 90) -> bytes:
    return encode(noise_image(seed, size), "JPEG", quality=quality)


def png(seed: int = 0, size: tuple[int, int] = (96, 96)) -> bytes:
    return encode(noise_image(seed, size), "PNG")


def webp(seed: int = 0, size: tuple[int, int] = (96, 96)) -> bytes:
    return encode(noise_image(seed, size), "WEBP", quality=90)


def gif(seed: int = 0) -> bytes:
    return encode(noise_image(seed, (32, 32)).convert("P"), "GIF")


def bmp(seed: int = 0) -> bytes:
    return encode(noise_image(seed, (32, 32)), "BMP")


def solid_png(size: tuple[int, int], colour: tuple[int, int, int] = (10, 200, 30)) -> bytes:
    """One colour compresses to almost nothing: few bytes, many pixels."""
    return encode(Image.new("RGB", size, colour), "PNG", optimize=True)


def truncated_jpeg(seed: int = 0) -> bytes:
    data = jpeg(seed, (160, 160))
    return data[: len(data) // 2]


def png_claiming_size(width: int, height: int) -> bytes:
    """A small real PNG whose header claims `width` x `height`: a decompression bomb as far as a decoder can tell."""
    data = bytearray(solid_png((8, 8)))
    # Signature (8) + IHDR length (4) + b"IHDR" (4) -> width, height; the chunk's CRC follows its 13 data bytes.
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def exif_jpeg(size: tuple[int, int], orientation: int) -> bytes:
    """A JPEG stored at `size` with an EXIF Orientation tag; its left half is red, its right half blue."""
    width, height = size
    image = Image.new("RGB", size, (220, 20, 20))
    image.paste((20, 20, 220), (width // 2, 0, width, height))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", quality=95, exif=exif.tobytes())
