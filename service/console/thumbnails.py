"""Downscaled JPEG thumbnails for the console, made with Pillow once per image and size, cached by content hash
(`<root>/<pixels>/ab/cd/<sha256>`) and deleted with the image file they were made from."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

from embeddings import ImageLimits, decode_image
from reference_catalog import BlobStore

THUMBNAIL_SIZES = {"small": 320, "large": 640}


class Thumbnails:
    def __init__(self, root: Path, limits: ImageLimits) -> None:
        self._root = root
        self._limits = limits

    def _cache(self, size: int) -> BlobStore:
        return BlobStore(self._root / str(size))

    def get(self, sha256: str, size: int, load: Callable[[], bytes]) -> bytes:
        """A JPEG at most `size` pixels on its longer side of the image whose bytes (`load()`) hash to `sha256`."""
        cache = self._cache(size)
        path = cache.path(sha256)
        if path.is_file():
            return path.read_bytes()
        data = self.make(load(), size)
        cache.put(sha256, data)
        return data

    def discard(self, sha256: str) -> None:
        """Forget every thumbnail of the image file `sha256` (called when that file is deleted)."""
        for size in THUMBNAIL_SIZES.values():
            self._cache(size).delete(sha256)

    def make(self, data: bytes, size: int) -> bytes:
        image = decode_image(data, self._limits, size).image  # upright RGB, within the service's input limits
        image.thumbnail((size, size))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=82, optimize=True)
        return buffer.getvalue()
