"""The ivf kind of `VectorIndex` (embeddings/index.py): when a catalog gets it, how its lists are trained and filled,
and how a query probes them.

Kept apart from the index itself, which owns the exact store, the locking and the choice between kinds: these
functions see only arrays and a faiss index, so the training and probing can be read (and changed) without the
bookkeeping of adds, removals and copies around them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import faiss
import numpy as np

IndexKind = Literal["flat", "ivf"]

TRAIN_POINTS_PER_LIST = 32  # k-means sample: this many catalog vectors per list (at most the whole catalog)
KMEANS_ITERATIONS = 10
PQ_TRAIN_POINTS = 65_536  # sample that trains the 4-bit product-quantizer codes
CHUNK = 65_536  # rows per add/compare step (bounds temporary memory)


@dataclass(frozen=True)
class IndexOptions:
    """Which kind of index a catalog of a given size gets, and how an ivf index is built and searched."""

    ivf_min_vectors: int = 10_000
    nlist: int = 0  # 0: 4 x sqrt(size) when trained
    nprobe: int = 64
    rerank: int = 5
    exact_scope_max: int = 2_000

    def kind_for(self, size: int, current: IndexKind = "flat") -> IndexKind:
        """The kind for `size` vectors; an ivf index stays ivf down to half the threshold."""
        if size >= self.ivf_min_vectors or (current == "ivf" and size >= self.ivf_min_vectors / 2):
            return "ivf"
        return "flat"

    def nlist_for(self, size: int) -> int:
        wanted = self.nlist or max(16, round(4 * math.sqrt(size)))
        return max(1, min(wanted, size // 4))  # k-means needs several points per centroid


def build_ivf(dim: int, nlist: int, ids: np.ndarray, vectors: np.ndarray) -> faiss.IndexIVFPQFastScan:
    """An ivf index of `nlist` lists trained on a sample of `vectors` (the catalog's own) and filled with all of them."""
    rows = np.random.default_rng(0).choice(len(ids), min(len(ids), TRAIN_POINTS_PER_LIST * nlist), replace=False)
    sample = np.ascontiguousarray(vectors[np.sort(rows)])
    clustering = faiss.Clustering(dim, nlist)
    clustering.niter = KMEANS_ITERATIONS
    clustering.spherical = True  # unit centroids: inner product to a centroid is the cosine
    clustering.min_points_per_centroid = 1
    clustering.max_points_per_centroid = TRAIN_POINTS_PER_LIST * 2
    clustering.seed = 1234
    clustering.train(sample, faiss.IndexFlatIP(dim))
    centroids = faiss.vector_to_array(clustering.centroids).reshape(nlist, dim)
    # An exact coarse quantizer: each vector goes to its nearest list. An HNSW graph over the centroids assigns too
    # many vectors to a near-best list in high dimensions, where centroids are nearly equidistant, and loses recall at
    # any nprobe (see benchmarks/README.md, section "Index"). Searches find their lists the same way.
    quantizer = faiss.IndexFlatIP(dim)
    quantizer.add(centroids)
    ivf = faiss.IndexIVFPQFastScan(quantizer, dim, nlist, pq_subquantizers(dim), 4, faiss.METRIC_INNER_PRODUCT)
    quantizer_handle: Any = quantizer
    quantizer_handle.this.disown()  # the ivf index owns (and frees) its quantizer
    ivf.own_fields = True
    ivf.train(sample[:PQ_TRAIN_POINTS])  # the quantizer holds its centroids already: this trains the codes only
    fill_ivf(ivf, ids, vectors)
    return ivf


def fill_ivf(ivf: faiss.IndexIVFPQFastScan, ids: np.ndarray, vectors: np.ndarray) -> None:
    """Add every vector to its list, a chunk at a time (the codes are computed on a contiguous copy of each chunk)."""
    for start in range(0, len(ids), CHUNK):
        ivf.add_with_ids(np.ascontiguousarray(vectors[start : start + CHUNK]), ids[start : start + CHUNK])


def probe(ivf: faiss.IndexIVFPQFastScan, queries: np.ndarray, candidates: int, nprobe: int, selector: Any) -> np.ndarray:
    """The best `candidates` ids per query by their codes, in the `nprobe` lists nearest to it (-1 where fewer)."""
    list_sims, lists = ivf.quantizer.search(queries, nprobe)  # exact: one matrix product with the centroids
    params = faiss.SearchParametersIVF(nprobe=nprobe, sel=selector)  # type: ignore[call-arg]
    sims = np.empty((len(queries), candidates), dtype=np.float32)
    ids = np.empty((len(queries), candidates), dtype=np.int64)
    ptr = faiss.swig_ptr
    handle: Any = ivf  # the C++ call: the Python wrapper of search_preassigned takes no search parameters
    handle.search_preassigned_c(
        len(queries), ptr(queries), candidates, ptr(lists), ptr(list_sims), ptr(sims), ptr(ids), False, params
    )
    return ids


def pq_subquantizers(dim: int) -> int:
    """Sub-quantizers of the 4-bit codes: one per 4 dimensions (fewer bytes lose recall that re-ranking can't win back)."""
    for per in (4, 2, 1):
        if dim % per == 0:
            return dim // per
    return dim
