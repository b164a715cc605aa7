"""FAISS inner-product index keyed by catalog image id, persisted atomically with its model fingerprint."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

_MAGIC = b"CSIDX1\n"


@dataclass(frozen=True)
class IndexHit:
    id: int
    similarity: float


class VectorIndex:
    """Exact cosine search over unit vectors; ids are the catalog's integer image keys.

    `revision` is the catalog revision the index reflects, so a restart can tell whether it is stale.
    """

    def __init__(self, dim: int, fingerprint: str, revision: int = 0) -> None:
        self.dim = dim
        self.fingerprint = fingerprint
        self.revision = revision
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._lock = threading.RLock()

    @property
    def version(self) -> str:
        return f"{self.fingerprint[:12]}-r{self.revision}"

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def ids(self) -> np.ndarray:
        with self._lock:
            return faiss.vector_to_array(self._index.id_map).astype(np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add or replace vectors for `ids` (re-adding an id replaces its vector)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(ids) != len(vectors):
            raise ValueError(f"expected {len(ids)} vectors of dim {self.dim}, got shape {vectors.shape}")
        with self._lock:
            if len(ids):
                self._index.remove_ids(faiss.IDSelectorBatch(ids))
                self._index.add_with_ids(vectors, ids)

    def remove(self, ids: np.ndarray) -> int:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        with self._lock:
            return int(self._index.remove_ids(faiss.IDSelectorBatch(ids))) if len(ids) else 0

    def search(self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None) -> list[list[IndexHit]]:
        """Top-k hits per query row, best first; `allowed_ids` restricts the search (brand/product scope)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if len(queries) == 0:
            return []
        with self._lock:
            if self._index.ntotal == 0 or k <= 0 or (allowed_ids is not None and len(allowed_ids) == 0):
                return [[] for _ in range(len(queries))]
            params = None
            if allowed_ids is not None:
                selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed_ids, dtype=np.int64))
                params = faiss.SearchParameters(sel=selector)  # type: ignore[call-arg]
            sims, ids = self._index.search(queries, min(k, int(self._index.ntotal)), params=params)
        return [
            [IndexHit(int(i), float(s)) for s, i in zip(row_s, row_i, strict=True) if i >= 0]
            for row_s, row_i in zip(sims, ids, strict=True)
        ]

    def reconstruct(self, image_id: int) -> np.ndarray:
        with self._lock:
            return np.asarray(self._index.reconstruct(int(image_id)), dtype=np.float32)

    def save(self, path: Path) -> None:
        """Write header and vectors to a temp file, fsync, then rename over `path`: readers see old or new."""
        with self._lock:
            payload = faiss.serialize_index(self._index)
            header: dict[str, Any] = {"dim": self.dim, "fingerprint": self.fingerprint, "revision": self.revision}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        header_bytes = json.dumps(header).encode()
        with open(tmp, "wb") as fh:
            fh.write(_MAGIC)
            fh.write(len(header_bytes).to_bytes(8, "little"))
            fh.write(header_bytes)
            fh.write(payload.tobytes())
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> VectorIndex:
        data = path.read_bytes()
        if not data.startswith(_MAGIC):
            raise ValueError(f"{path} is not a counterfeit-scan index file")
        start = len(_MAGIC)
        size = int.from_bytes(data[start : start + 8], "little")
        header = json.loads(data[start + 8 : start + 8 + size])
        index = cls(int(header["dim"]), str(header["fingerprint"]), int(header["revision"]))
        raw = np.frombuffer(data, dtype=np.uint8, offset=start + 8 + size)
        loaded = faiss.deserialize_index(raw.copy())
        index._index = faiss.IndexIDMap2(loaded) if not isinstance(loaded, faiss.IndexIDMap2) else loaded
        return index
