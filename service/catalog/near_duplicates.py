"""In-memory table of reference images' perceptual hashes, searched by Hamming distance."""

from __future__ import annotations

import threading

import numpy as np

from embeddings.perceptual_hash import hamming_distances


class NearDuplicateTable:
    def __init__(self) -> None:
        self._keys = np.empty(0, dtype=np.int64)
        self._hashes = np.empty(0, dtype=np.uint64)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._keys)

    def replace(self, keys: np.ndarray, hashes: np.ndarray) -> None:
        with self._lock:
            self._keys, self._hashes = keys.astype(np.int64), hashes.view(np.uint64).copy()

    def add(self, key: int, phash: int) -> None:
        with self._lock:
            self._keys = np.append(self._keys, np.int64(key))
            self._hashes = np.append(self._hashes, np.array([phash], dtype=np.int64).view(np.uint64))

    def remove(self, key: int) -> None:
        with self._lock:
            keep = self._keys != key
            self._keys, self._hashes = self._keys[keep], self._hashes[keep]

    def update(self, remove: list[int], keys: np.ndarray, hashes: np.ndarray) -> None:
        """Drop the entries of `remove` and of `keys`, then add `keys` with `hashes` (64-bit, signed or not): one pass
        over the table whatever the number of changes (`add` and `remove` copy it each time)."""
        with self._lock:
            drop = np.array(sorted({*remove, *keys.tolist()}), dtype=np.int64)
            keep = ~np.isin(self._keys, drop)
            self._keys = np.concatenate([self._keys[keep], keys.astype(np.int64)])
            self._hashes = np.concatenate([self._hashes[keep], np.asarray(hashes).view(np.uint64)])

    def keys(self) -> set[int]:
        return set(self._keys.tolist())

    def find(self, phash: int, max_bits: int) -> list[tuple[int, int]]:
        """(key, distance) of every hash within `max_bits` of `phash`, closest first."""
        keys, hashes = self._keys, self._hashes  # one consistent snapshot
        if max_bits < 0 or len(keys) == 0:
            return []
        distances = hamming_distances(hashes, phash)
        hits = np.flatnonzero(distances <= max_bits)
        order = hits[np.argsort(distances[hits], kind="stable")]
        return [(int(keys[i]), int(distances[i])) for i in order]
