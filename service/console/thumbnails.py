"""Downscaled JPEG thumbnails for the console, made with Pillow once per image and size, cached by content hash."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path

from embeddings import ImageLimits, decode_image
from reference_catalog import BlobStore

THUMBNAIL_SIZES = {"small": 320, "large": 640}


class Thumbnails:
    def __init__(self, root: Path, limits: ImageLimits) -> None:
        self._cache = BlobStore(root)
        self._limits = limits

    def get(self, sha256: str, size: int, load: Callable[[], bytes]) -> bytes:
        """A JPEG at most `size` pixels on its longer side of the image whose bytes (`load()`) hash to `sha256`."""
        key = hashlib.sha256(f"{sha256}:{size}".encode()).hexdigest()
        path = self._cache.path(key)
        if path.is_file():
            return path.read_bytes()
        data = self.make(load(), size)
        self._cache.put(key, data)
        return data

    def make(self, data: bytes, size: int) -> bytes:
        image = decode_image(data, self._limits, size).image  # upright RGB, within the service's input limits
        image.thumbnail((size, size))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=82, optimize=True)
        return buffer.getvalue()
