"""FAISS inner-product index keyed by catalog image id, persisted atomically with its model fingerprint.

Two kinds, chosen by the catalog's size (`IndexOptions.kind_for`):

- **flat**: exact search over every vector (`IndexIDMap2(IndexFlatIP)`), below `ivf_min_vectors`.
- **ivf**: the same exact store, plus an inverted-file index over it for search (`IndexIVFPQFastScan`): `nlist` lists
  (4 x sqrt(size) unless set) whose centroids are trained by spherical k-means on a sample of the catalog's own
  vectors; each vector goes to its nearest list (an exact coarse quantizer), stored as a 4-bit product-quantizer code
  of its residual (one sub-quantizer per 4 dimensions: 160 bytes for 1,280 dimensions, a 32nd of the float vector),
  scanned with SIMD lookup tables. A search finds the `nprobe` nearest lists with one matrix product against the
  centroids, keeps the `k x rerank` best candidates by their codes and re-ranks those exactly on the stored float
  vectors, so the similarities it reports are exact; only the candidate set is approximate. A brand/product scope of
  at most `exact_scope_max` ids is searched exactly over just those ids (their vectors, gathered); a wider scope goes
  through the lists with an ID selector, and a query that finds fewer than k in-scope hits that way is probed again
  over 8 x `nprobe` lists.

Kind and training follow the size (`refit`, which the index keeper runs whenever it loads, repairs or rebuilds an index, and
on a copy in the background once a running service's catalog calls for it, `IndexKeeper.refit`):
flat becomes ivf at `ivf_min_vectors`; ivf goes back to flat below half of that (so deleting a few images around the
threshold does not rebuild it back and forth); an ivf index is retrained, centroids and codebooks, once it holds more
than twice the vectors it was trained on. In between, adds go straight into the trained lists without retraining: the
centroids describe the catalog's distribution, which a catalog that less than doubles keeps. Removed or replaced
vectors leave stale codes in the lists (skipped by searches; faiss 1.15's fast-scan lists corrupt codes added after a
`remove_ids`), which `refit` drops once they exceed a tenth of the vectors.

The ivf kind's options, training and probing live in embeddings/index_ivf.py, the file format in
embeddings/index_file.py; this module keeps the exact store, the choice of kind, the searches and the locking.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from embeddings.index_file import read_index_file, write_index_file
from embeddings.index_ivf import CHUNK, IndexKind, IndexOptions, build_ivf, fill_ivf, probe

__all__ = ["IndexHit", "IndexKind", "IndexOptions", "VectorIndex"]

log = logging.getLogger(__name__)

# faiss 1.15 computes exact inner products with a matrix product (BLAS) only once queries x dim reach this threshold;
# its default (100 queries of 1,280 dims) leaves the service's batches of up to 16 photos on a per-query loop that
# reads every vector once per query, several times slower; from a few queries on, one product wins (see
# benchmarks/README.md, section "Index").
faiss.cvar.distance_compute_blas_threshold = 4096

RETRAIN_GROWTH = 2.0  # retrain an ivf index once it holds this many times the vectors it was trained on
STALE_MAX_SHARE = 0.1  # refit compacts the ivf lists once stale codes exceed this share of the vectors
WIDEN_PROBES = 8  # a scoped query short of hits is probed again over this many times nprobe lists


@dataclass(frozen=True)
class IndexHit:
    id: int
    similarity: float


class VectorIndex:
    """Cosine search over unit vectors; ids are the catalog's integer image keys.

    `revision` is the catalog revision the index reflects, so a restart can tell whether it is stale. Every kind keeps
    the exact float vectors (`reconstruct`, exact re-ranking and scoped search, rebuilding another kind without the
    catalog).
    """

    def __init__(self, dim: int, fingerprint: str, revision: int = 0, options: IndexOptions | None = None) -> None:
        self.dim = dim
        self.fingerprint = fingerprint
        self.revision = revision
        self.options = options or IndexOptions()
        self._flat = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._ivf: faiss.IndexIVFPQFastScan | None = None
        self._trained_size = 0
        self._present: set[int] = set()
        self._lock = threading.RLock()

    @property
    def kind(self) -> IndexKind:
        return "flat" if self._ivf is None else "ivf"

    @property
    def nlist(self) -> int:
        return 0 if self._ivf is None else int(self._ivf.nlist)

    @property
    def trained_size(self) -> int:
        """The catalog size the ivf lists were trained at (0 for flat); `refit` retrains past twice this."""
        return self._trained_size

    @property
    def version(self) -> str:
        kind = "" if self._ivf is None else f"-ivf{self._ivf.nlist}"
        return f"{self.fingerprint[:12]}{kind}-r{self.revision}"

    def describe(self) -> str:
        if self._ivf is None:
            return f"flat (exact), {len(self):,} vectors"
        return (
            f"ivf, {len(self):,} vectors: nlist={self._ivf.nlist} (trained on {self._trained_size:,}), "
            f"nprobe={self.options.nprobe}, {self._ivf.pq.M}x4-bit codes re-ranked exactly (top {self.options.rerank} x k)"
        )

    def __len__(self) -> int:
        return int(self._flat.ntotal)

    def ids(self) -> np.ndarray:
        with self._lock:
            return faiss.vector_to_array(self._flat.id_map).astype(np.int64)

    # --- writes ----------------------------------------------------------------------------------------------
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add or replace vectors for `ids` (re-adding an id replaces its vector; re-adding the same vector is free)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(ids) != len(vectors):
            raise ValueError(f"expected {len(ids)} vectors of dim {self.dim}, got shape {vectors.shape}")
        if len(ids) == 0:
            return
        if len(np.unique(ids)) != len(ids):  # the same id twice: the last vector wins
            _, last = np.unique(ids[::-1], return_index=True)
            keep = np.sort(len(ids) - 1 - last)
            ids, vectors = ids[keep], vectors[keep]
        with self._lock:
            for start in range(0, len(ids), CHUNK):
                self._add_chunk(ids[start : start + CHUNK], vectors[start : start + CHUNK])

    def _add_chunk(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        present = np.fromiter((i in self._present for i in ids.tolist()), dtype=bool, count=len(ids))
        if present.any():
            stored = self._flat.reconstruct_batch(ids[present])
            same = np.zeros(len(ids), dtype=bool)
            same[present] = (stored == vectors[present]).all(axis=1)
            replaced = ids[present & ~same]
            if len(replaced):
                self._remove_present(replaced)
            ids, vectors = ids[~same], vectors[~same]
        if len(ids) == 0:
            return
        self._flat.add_with_ids(vectors, ids)
        if self._ivf is not None:
            self._ivf.add_with_ids(vectors, ids)
        self._present.update(ids.tolist())

    def remove(self, ids: np.ndarray) -> int:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        with self._lock:
            present = np.array(sorted({i for i in ids.tolist() if i in self._present}), dtype=np.int64)
            return self._remove_present(present) if len(present) else 0

    def _remove_present(self, ids: np.ndarray) -> int:
        """Drop `ids` from the exact store. Their codes stay in the ivf lists (searches skip ids not present, and
        re-ranking uses the current vectors) until `refit` compacts them: faiss 1.15's fast-scan lists corrupt the
        codes added after a `remove_ids`."""
        removed = int(self._flat.remove_ids(faiss.IDSelectorBatch(ids)))
        self._present.difference_update(ids.tolist())
        return removed

    @property
    def stale_codes(self) -> int:
        """Codes in the ivf lists of removed images or of replaced vectors (0 for flat)."""
        return 0 if self._ivf is None else int(self._ivf.ntotal) - len(self)

    # --- kind ------------------------------------------------------------------------------------------------
    def needs_refit(self) -> bool:
        """Whether `refit` would change anything: another kind, a retrain after doubling, or stale codes to drop."""
        with self._lock:
            size = len(self)
            wanted = self.options.kind_for(size, self.kind)
            if wanted == "flat":
                return self._ivf is not None
            if self._ivf is None or size > RETRAIN_GROWTH * self._trained_size:
                return True
            return self.stale_codes > STALE_MAX_SHARE * size

    def copy(self) -> VectorIndex:
        """An independent copy (same vectors, kind and training) that can be refitted while this one serves."""
        with self._lock:
            twin = VectorIndex(self.dim, self.fingerprint, self.revision, self.options)
            # clone_index copies the vectors once (a serialized copy would hold them twice on the way, gigabytes at a
            # million vectors); both answer an object of the index's own class that owns the index
            twin._flat = faiss.clone_index(self._flat)  # type: ignore[assignment]
            if self._ivf is not None:  # codes only: a 32nd of the vectors
                twin._ivf = faiss.deserialize_index(faiss.serialize_index(self._ivf))  # type: ignore[assignment]
            twin._trained_size = self._trained_size
            twin._present = set(self._present)
            return twin

    def catch_up(self, live: VectorIndex) -> int:
        """Apply what `live` gained or lost since this was copied from it (ids only: vectors never change in place
        within one model); returns the number of ids added or removed."""
        with live._lock, self._lock:
            gone = np.fromiter(self._present - live._present, dtype=np.int64)
            new = np.fromiter(live._present - self._present, dtype=np.int64)
            if len(gone):
                self._remove_present(gone)
            for start in range(0, len(new), CHUNK):
                ids = new[start : start + CHUNK]
                self._add_chunk(ids, live._flat.reconstruct_batch(ids))
            self.revision = live.revision
            return len(gone) + len(new)

    def refit(self) -> bool:
        """Make this the kind (and training) its size calls for; returns whether anything changed.

        Holds the index's lock while it trains and fills an ivf index (minutes at a million vectors): call it before
        the index serves, as the index keeper does when it loads, repairs or rebuilds one, or on a `copy` (the keeper's
        `refit`, while the catalog grows or shrinks under a running service).
        """
        with self._lock:
            if not self.needs_refit():
                return False
            size = len(self)
            if self.options.kind_for(size, self.kind) == "flat":
                self._ivf, self._trained_size = None, 0
                log.info("index: %s", self.describe())
                return True
            if self._ivf is not None and size <= RETRAIN_GROWTH * self._trained_size:  # too many stale codes
                started = time.perf_counter()
                stale = self.stale_codes
                self._ivf.reset()  # same centroids and codebooks: only the lists are written again
                fill_ivf(self._ivf, *self._stored())
                log.info("index: dropped %d stale codes in %.1f s", stale, time.perf_counter() - started)
                return True
            started = time.perf_counter()
            self._ivf = build_ivf(self.dim, self.options.nlist_for(size), *self._stored())
            self._trained_size = size
            log.info("index: %s; built in %.1f s", self.describe(), time.perf_counter() - started)
            return True

    def _stored(self) -> tuple[np.ndarray, np.ndarray]:
        """The flat store's ids and a view of its vectors (valid while the lock is held and nothing is added)."""
        flat: Any = faiss.downcast_index(self._flat.index)
        size = int(flat.ntotal)
        vectors = faiss.rev_swig_ptr(flat.get_xb(), size * self.dim).reshape(size, self.dim)
        return faiss.vector_to_array(self._flat.id_map).astype(np.int64), vectors

    # --- search ----------------------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None) -> list[list[IndexHit]]:
        """Top-k hits per query row, best first; `allowed_ids` restricts the search (brand/product scope)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if len(queries) == 0:
            return []
        with self._lock:
            if self._flat.ntotal == 0 or k <= 0 or (allowed_ids is not None and len(allowed_ids) == 0):
                return [[] for _ in range(len(queries))]
            if self._ivf is None:
                sims, ids = self._search_flat(queries, k, allowed_ids)
            elif allowed_ids is not None and len(allowed_ids) <= self.options.exact_scope_max:
                sims, ids = self._search_subset(queries, k, allowed_ids)
            else:
                sims, ids = self._search_ivf(self._ivf, queries, k, allowed_ids)
        return [
            [IndexHit(int(i), float(s)) for s, i in zip(row_s, row_i, strict=True) if i >= 0]
            for row_s, row_i in zip(sims, ids, strict=True)
        ]

    def _search_flat(self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        params = None
        if allowed_ids is not None:
            selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed_ids, dtype=np.int64))
            params = faiss.SearchParameters(sel=selector)  # type: ignore[call-arg]
        sims, ids = self._flat.search(queries, min(k, int(self._flat.ntotal)), params=params)
        return sims, ids

    def _search_subset(self, queries: np.ndarray, k: int, allowed_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over just `allowed_ids` (those in the index): their vectors gathered, one matrix product."""
        keys = np.array([i for i in np.unique(allowed_ids).tolist() if i in self._present], dtype=np.int64)
        if len(keys) == 0:
            return np.zeros((len(queries), 0), dtype=np.float32), np.zeros((len(queries), 0), dtype=np.int64)
        sims, rows = faiss.knn(queries, self._flat.reconstruct_batch(keys), min(k, len(keys)), faiss.METRIC_INNER_PRODUCT)
        return sims, np.where(rows >= 0, keys[rows], -1)

    def _search_ivf(
        self, ivf: faiss.IndexIVFPQFastScan, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Candidates from the IVF's 4-bit codes, re-ranked exactly on the stored vectors."""
        selector = None if allowed_ids is None else faiss.IDSelectorBatch(np.ascontiguousarray(allowed_ids, dtype=np.int64))
        reachable = len(self) if allowed_ids is None else len(allowed_ids)
        candidates = min(k * self.options.rerank, len(self))
        nprobe = min(self.options.nprobe, int(ivf.nlist))
        sims, ids = self._rerank(queries, probe(ivf, queries, candidates, nprobe, selector), k)
        short = np.flatnonzero((ids >= 0).sum(axis=1) < min(k, reachable))
        wider = min(nprobe * WIDEN_PROBES, int(ivf.nlist))
        if len(short) and wider > nprobe:
            again = probe(ivf, queries[short], candidates, wider, selector)
            sims[short], ids[short] = self._rerank(queries[short], again, k)
        return sims, ids

    def _rerank(self, queries: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact similarities of each row's candidates (each id once, removed ones skipped), best k first."""
        valid = candidates >= 0
        if self.stale_codes:  # codes of removed images, and old codes repeating a replaced vector's id
            present, listed = self._present, candidates.ravel().tolist()
            valid = np.fromiter((i in present for i in listed), dtype=bool, count=len(listed)).reshape(candidates.shape)
            order = np.argsort(candidates, axis=1, kind="stable")
            ranked = np.take_along_axis(candidates, order, 1)
            repeat = np.zeros(candidates.shape, dtype=bool)
            repeat[:, 1:] = ranked[:, 1:] == ranked[:, :-1]
            np.put_along_axis(valid, order, np.take_along_axis(valid, order, 1) & ~repeat, 1)
        sims = np.full(candidates.shape, -np.inf, dtype=np.float32)
        if valid.any():  # one gather of the candidates' vectors (rows rarely share one), one pass of dot products
            vectors = self._flat.reconstruct_batch(candidates[valid])
            sims[valid] = np.einsum("ij,ij->i", queries[np.nonzero(valid)[0]], vectors)
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        best_sims, best_ids = np.take_along_axis(sims, order, 1), np.take_along_axis(candidates, order, 1)
        best_ids[~np.isfinite(best_sims)] = -1
        return best_sims, best_ids

    def reconstruct(self, image_id: int) -> np.ndarray:
        with self._lock:
            return np.asarray(self._flat.reconstruct(int(image_id)), dtype=np.float32)

    # --- persistence -----------------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Write the index file atomically (embeddings/index_file.py): readers see the old file or the new one."""
        with self._lock:
            parts = [faiss.serialize_index(self._flat)]
            if self._ivf is not None:
                parts.append(faiss.serialize_index(self._ivf))
            header: dict[str, Any] = {
                "dim": self.dim,
                "fingerprint": self.fingerprint,
                "revision": self.revision,
                "kind": self.kind,
                "nlist": self.nlist,
                "trained_size": self._trained_size,
            }
        write_index_file(path, header, parts)

    @classmethod
    def load(cls, path: Path, options: IndexOptions | None = None) -> VectorIndex:
        """Read an index file (either format); raises ValueError or RuntimeError when it is not whole."""
        header, parts = read_index_file(path)
        index = cls(int(header["dim"]), str(header["fingerprint"]), int(header["revision"]), options)
        index._flat = parts[0] if isinstance(parts[0], faiss.IndexIDMap2) else faiss.IndexIDMap2(parts[0])
        if header.get("kind", "flat") == "ivf":
            ivf = parts[1]
            if not isinstance(ivf, faiss.IndexIVFPQFastScan) or ivf.ntotal != index._flat.ntotal:
                raise ValueError(f"{path}: its ivf part does not match its vectors")
            index._ivf = ivf
            index._trained_size = int(header["trained_size"])
        index._present = set(index.ids().tolist())
        return index
