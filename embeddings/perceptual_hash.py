"""Perceptual hashes (pHash via imagehash) for near-duplicate photos, and Hamming search over many of them."""

from __future__ import annotations

import imagehash
import numpy as np
from PIL import Image


def perceptual_hash(image: Image.Image) -> int:
    """64-bit pHash as a signed int64 (what SQL BIGINT columns and numpy int64 arrays hold)."""
    bits = imagehash.phash(image).hash.flatten()
    value = int("".join("1" if b else "0" for b in bits), 2)
    return int(np.array([value], dtype=np.uint64).view(np.int64)[0])


def hamming_distances(hashes: np.ndarray, query: int) -> np.ndarray:
    """Bits that differ between `query` and each of `hashes` (uint64 or int64 arrays)."""
    q = np.array([query], dtype=np.int64).view(np.uint64)[0]
    distances: np.ndarray = np.bitwise_count(hashes.view(np.uint64) ^ q).astype(np.int64)
    return distances
