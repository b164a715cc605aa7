"""FAISS search cost as the catalog grows: exact (flat) vs HNSW vs IVF, recall@10, cost per photo vs the model.

    .venv/bin/python benchmarks/index.py [--sizes 10000,100000,1000000] [--queries 500] [--batch 16] [--kinds ...]

Catalogs are synthetic unit vectors of the model's dimension (1280 for EfficientNet-Lite0), shaped like the real
embeddings of ../shared/data (see the constants below): v = normalise(mu + category + product + photo), 20 photos per
product, 50 products per category. Queries are new photos of catalog products. Vectors are generated once, chunk by
chunk, into a temporary file, so each index is filled without a second copy in memory (1M x 1280 float32 is 5 GB; one
index at a time). HNSW-SQ8 keeps 8-bit codes in the graph and re-ranks its best candidates on the full vectors.

Search is timed on one thread (as the service's scorer thread runs it) in batches of `--batch` queries, and reported
as CPU time per query, next to the model's time per photo (ONNX Runtime, real photos, the fastest configuration).
Importing embeddings.index lowers faiss's BLAS threshold as the service does, so exact (flat) searches of a batch are
one matrix product here too.

`service` rows are the service's own index (embeddings/index.py `VectorIndex` with the default `index_*` settings):
the kind it picks for the size, filled and refitted as the index keeper does it, searched through `VectorIndex.search`
(exact re-ranking included); then the same index at other nprobe values, and brand-scoped searches (a 2,000-image
brand and one holding 10% of the catalog, queried with photos of its own products, recall against exact search
within the scope). HNSW graphs take long to build at a million vectors on a small machine: without `--kinds`, the
hnsw kinds run only up to 100k vectors. Prints, per size, the service's choice and the cheapest configuration with
recall@10 >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import faiss
import numpy as np
import scipy.fft

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.baseline import DEFAULT_DATA, best_raw, machine, model_inputs, query_photos
from embeddings.index import VectorIndex
from service.config import Settings

PER_PRODUCT, PER_CATEGORY = 20, 50  # photos per product, products per category
# Measured on the 900 photos of ../shared/data with EfficientNet-Lite0: photos of different categories score ~0.2-0.27
# (sneakers vs groceries vs other), different products of one category ~0.43-0.56, photos of one product ~0.66-0.70;
# the spread decays like a power law over principal components (variance of the i-th ~ 1/i^0.95).
MEAN_VAR, CATEGORY_VAR, PRODUCT_VAR, ALPHA = 0.22, 0.24, 0.2, 1.0
CHUNK = 50_000
HNSW_KINDS = {"hnsw", "hnsw-sq8"}
DEFAULT_KINDS = "flat,hnsw,hnsw-sq8,ivf,service"
HNSW_DEFAULT_MAX = 100_000  # without --kinds, HNSW graphs are built up to this size only
BRAND_SCOPE = 2_000


@dataclass
class Synthetic:
    """Catalog-like unit vectors: normalise(mu + category + product + photo), offsets with the measured spectrum."""

    dim: int
    size: int
    seed: int = 0
    cache: Path | None = None  # the catalog is written here on the first pass and read back on the next ones

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        mu = rng.standard_normal(self.dim).astype(np.float32)
        self.mu = mu / np.linalg.norm(mu) * np.sqrt(MEAN_VAR)
        shape = 1.0 / np.arange(1, self.dim + 1) ** ALPHA
        shape /= shape.sum()
        photo_var = max(1e-6, 1 - MEAN_VAR - CATEGORY_VAR - PRODUCT_VAR)
        self.photo_scale = np.sqrt(shape * photo_var).astype(np.float32)
        self.products = max(1, self.size // PER_PRODUCT)
        categories = max(1, -(-self.products // PER_CATEGORY))
        category = rng.standard_normal((categories, self.dim), dtype=np.float32) * np.sqrt(shape * CATEGORY_VAR)
        product = rng.standard_normal((self.products, self.dim), dtype=np.float32) * np.sqrt(shape * PRODUCT_VAR)
        self.centers = (category[np.arange(self.products) // PER_CATEGORY] + product).astype(np.float32)
        # An orthogonal mixing of the axes (signs, permutation, orthonormal DCT): real principal axes are not the
        # coordinate axes, which an 8-bit scalar quantizer (one range per coordinate) would otherwise exploit.
        self.signs = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), self.dim)
        self.permutation = rng.permutation(self.dim)

    def photos(self, products: np.ndarray, seed: tuple[int, ...]) -> np.ndarray:
        noise = np.random.default_rng(seed).standard_normal((len(products), self.dim), dtype=np.float32) * self.photo_scale
        v = scipy.fft.dct(((self.mu + self.centers[products] + noise) * self.signs)[:, self.permutation], norm="ortho", axis=1)
        return np.asarray(v / np.linalg.norm(v, axis=1, keepdims=True), dtype=np.float32)

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) of the catalog, CHUNK rows at a time, the same on every call."""
        path = self.cache / f"catalog-{self.size}-{self.dim}-{self.seed}.f32" if self.cache else None
        stored = np.memmap(path, np.float32, "r", shape=(self.size, self.dim)) if path and path.exists() else None
        partial = path.with_suffix(".partial") if path else None  # renamed once complete: a pass cut short is not kept
        writing = np.memmap(partial, np.float32, "w+", shape=(self.size, self.dim)) if partial and stored is None else None
        for start in range(0, self.size, CHUNK):
            ids = np.arange(start, min(self.size, start + CHUNK), dtype=np.int64)
            if stored is not None:
                yield ids, np.ascontiguousarray(stored[start : start + len(ids)])
                continue
            vectors = self.photos(ids // PER_PRODUCT, (self.seed, 2, start))
            if writing is not None:
                writing[start : start + len(ids)] = vectors
            yield ids, vectors
        if writing is not None and partial is not None and path is not None:
            writing.flush()
            partial.replace(path)

    def sample(self, count: int, seed: int) -> np.ndarray:
        """`count` catalog vectors chosen at random (to train PCA and IVF centroids)."""
        rows = np.sort(np.random.default_rng((self.seed, 3, seed)).choice(self.size, min(count, self.size), replace=False))
        return np.concatenate([vectors[np.isin(ids, rows)] for ids, vectors in self.chunks()])

    def queries(self, count: int) -> np.ndarray:
        """New photos of catalog products (as listing photos of catalogued goods are)."""
        products = np.random.default_rng((self.seed, 4)).integers(0, self.products, count)
        return self.photos(products, (self.seed, 5))

    def scoped_queries(self, count: int, first_id: int, size: int) -> np.ndarray:
        """New photos of the products whose catalog ids lie in [first_id, first_id + size) (a brand's own)."""
        low, high = first_id // PER_PRODUCT, max(first_id // PER_PRODUCT + 1, (first_id + size) // PER_PRODUCT)
        products = np.random.default_rng((self.seed, 8, first_id)).integers(low, high, count)
        return self.photos(products, (self.seed, 9, first_id))

    def stats(self) -> str:
        q = self.queries(300)
        products = np.random.default_rng((self.seed, 4)).integers(0, self.products, 300)
        same = np.einsum("ij,ij->i", q, self.photos(products, (self.seed, 6)))
        neighbour = np.minimum(products ^ 1, self.products - 1)  # the other product of its pair: same category
        kin = np.einsum("ij,ij->i", q, self.photos(neighbour, (self.seed, 7)))
        _, first = next(iter(self.chunks()))
        return (
            f"random pairs {float((q @ first[:2000].T).mean()):.2f}, same category {float(kin.mean()):.2f}, "
            f"same product {float(same.mean()):.2f}"
        )


class Searchable(Protocol):
    def search(self, x: np.ndarray, k: int) -> tuple[Any, np.ndarray]: ...


@dataclass
class ServiceSearch:
    """The service's VectorIndex behind faiss's search signature (ids padded with -1), optionally brand-scoped."""

    index: VectorIndex
    allowed: np.ndarray | None = None

    def search(self, x: np.ndarray, k: int) -> tuple[None, np.ndarray]:
        ids = np.full((len(x), k), -1, dtype=np.int64)
        for row, hits in enumerate(self.index.search(x, k, self.allowed)):
            ids[row, : len(hits)] = [hit.id for hit in hits]
        return None, ids


def fill(index: faiss.Index, data: Synthetic) -> float:
    started = time.perf_counter()
    for ids, vectors in data.chunks():
        index.add_with_ids(vectors, ids)
    return time.perf_counter() - started


def search_cost(
    index: Searchable, queries: np.ndarray, batch: int, k: int = 10, min_seconds: float = 1.0
) -> tuple[np.ndarray, float]:
    """All queries' top-k ids, and CPU seconds per query with one thread, in batches of `batch`."""
    faiss.omp_set_num_threads(1)
    try:
        ids = np.empty((len(queries), k), dtype=np.int64)
        cpu, wall, done, passes = time.process_time(), time.perf_counter(), 0, 0
        while passes == 0 or (time.perf_counter() - wall < min_seconds and passes < 20):
            for start in range(0, len(queries), batch):
                _, ids[start : start + batch] = index.search(queries[start : start + batch], k)
            done, passes = done + len(queries), passes + 1
        return ids, (time.process_time() - cpu) / done
    finally:
        faiss.omp_set_num_threads(os.cpu_count() or 1)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def exact_truth(data: Synthetic, queries: np.ndarray, k: int = 10, scope: range | None = None) -> np.ndarray:
    """Exact top-k ids by brute force over the chunks (all threads), within the id range `scope` if given."""
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(queries), k), -1, dtype=np.int64)
    for ids, vectors in data.chunks():
        if scope is not None:
            inside = (ids >= scope.start) & (ids < scope.stop)
            if not inside.any():
                continue
            ids, vectors = ids[inside], vectors[inside]
        s = queries @ vectors.T
        if s.shape[1] < k:
            s = np.pad(s, ((0, 0), (0, k - s.shape[1])), constant_values=-np.inf)
            ids = np.pad(ids, (0, k - len(ids)), constant_values=-1)
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, part, 1)], 1)
        cand_i = np.concatenate([best_i, ids[part]], 1)
        order = np.argsort(-cand_s, 1)[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
    return best_i


@dataclass
class Row:
    size: int
    kind: str
    params: str
    build_s: float
    query_ms: float
    recall10: float
    memory_mb: float


def run_size(
    data: Synthetic, queries: np.ndarray, batch: int, model_ms: float, kinds: set[str], log: Callable[[str], None]
) -> list[Row]:
    rows: list[Row] = []
    started = time.perf_counter()
    truth = exact_truth(data, queries)
    log(f"{data.size:>9,} exact top-10 of {len(queries)} queries in {time.perf_counter() - started:.1f} s")
    vector_mb = data.size * data.dim * 4 / 2**20

    def report(row: Row) -> None:
        rows.append(row)
        log(
            f"{row.size:>9,} {row.kind:<8} {row.params:<30} build {row.build_s:7.1f} s  {row.query_ms:8.3f} ms/query "
            f"({row.query_ms / model_ms * 100:6.1f}% of a photo's model time)  recall@10 {row.recall10:.3f}  "
            f"~{row.memory_mb:,.0f} MB"
        )

    if "flat" in kinds:
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(data.dim))
        build = fill(index, data)
        few = queries[: batch * 4]  # exact search of a million vectors takes a while per query: a few batches
        found, cost = search_cost(index, few, batch, min_seconds=0.5)
        report(Row(data.size, "flat", "exact", build, cost * 1000, recall(found, truth[: len(few)]), vector_mb))
        del index

    if "hnsw" in kinds:
        hnsw = faiss.IndexHNSWFlat(data.dim, 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 40
        index = faiss.IndexIDMap2(hnsw)
        build = fill(index, data)
        for ef in (16, 32, 64, 128, 256):
            hnsw.hnsw.efSearch = ef
            found, cost = search_cost(index, queries, batch)
            memory = vector_mb + data.size * 64 * 4 / 2**20
            report(Row(data.size, "hnsw", f"M=32 efSearch={ef}", build, cost * 1000, recall(found, truth), memory))
        del index, hnsw

    if "hnsw-sq8" in kinds:
        # HNSW over 8-bit codes (a quarter of the bytes per hop); the best k_factor * k re-ranked on the full vectors.
        coded = faiss.IndexHNSWSQ(data.dim, faiss.ScalarQuantizer.QT_8bit, 32, faiss.METRIC_INNER_PRODUCT)  # type: ignore[arg-type]
        coded.hnsw.efConstruction = 40
        started = time.perf_counter()
        coded.train(data.sample(min(data.size, 50_000), seed=7))
        refine = faiss.IndexRefineFlat(coded)
        index = faiss.IndexIDMap2(refine)
        build = fill(index, data) + time.perf_counter() - started
        memory = vector_mb * 1.25 + data.size * 64 * 4 / 2**20
        for ef in (16, 32, 64, 128):
            coded.hnsw.efSearch = ef
            for k_factor in (2, 4):
                refine.k_factor = k_factor
                found, cost = search_cost(index, queries, batch)
                params = f"M=32 ef={ef} rerank={k_factor * 10}"
                report(Row(data.size, "hnsw-sq8", params, build, cost * 1000, recall(found, truth), memory))
        del index, refine, coded

    if "ivf" in kinds:
        nlist = int(2 ** round(np.log2(max(16, np.sqrt(data.size)))))
        quantizer = faiss.IndexFlatIP(data.dim)
        ivf = faiss.IndexIVFFlat(quantizer, data.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        started = time.perf_counter()
        ivf.train(data.sample(min(data.size, 40 * nlist), seed=nlist))
        build = fill(ivf, data) + time.perf_counter() - started
        for nprobe in (1, 2, 4, 8, 16, 32, 64):
            if nprobe > nlist:
                break
            ivf.nprobe = nprobe
            found, cost = search_cost(ivf, queries, batch)
            report(Row(data.size, "ivf", f"nlist={nlist} nprobe={nprobe}", build, cost * 1000, recall(found, truth), vector_mb))
        del ivf, quantizer

    if "service" in kinds:
        rows += run_service(data, queries, truth, batch, report)
    return rows


def run_service(data: Synthetic, queries: np.ndarray, truth: np.ndarray, batch: int, report: Callable[[Row], None]) -> list[Row]:
    """The service's own index with its default settings: the kind it picks for this size, built as the index keeper does
    (vectors added, then `refit`), searched through `VectorIndex.search`; then other nprobe values and scopes."""
    options = Settings().index_options()
    index = VectorIndex(data.dim, "synthetic", options=options)
    started = time.perf_counter()
    for ids, vectors in data.chunks():
        index.add(ids, vectors)
    index.refit()
    build = time.perf_counter() - started
    codes = data.size * (data.dim // 8 + 8) / 2**20 if index.kind == "ivf" else 0  # 4 bits per 4 dims, and the id
    memory = data.size * data.dim * 4 / 2**20 + codes
    described = f"{index.kind}" + (
        f" nlist={index.nlist} nprobe={options.nprobe} rerank={options.rerank}" if index.kind == "ivf" else ""
    )
    found, cost = search_cost(ServiceSearch(index), queries, batch, min_seconds=0.5)
    choice = Row(data.size, "service", described, build, cost * 1000, recall(found, truth), memory)
    report(choice)
    for nprobe in sorted({16, 32, 48, 64, 96} - {options.nprobe}) if index.kind == "ivf" else ():
        index.options = replace(options, nprobe=nprobe)
        found, cost = search_cost(ServiceSearch(index), queries, batch, min_seconds=0.5)
        params = f"ivf nlist={index.nlist} nprobe={nprobe} rerank={options.rerank}"
        report(Row(data.size, "service-nprobe", params, build, cost * 1000, recall(found, truth), memory))
    index.options = options
    for scope_size in sorted({min(BRAND_SCOPE, data.size), max(BRAND_SCOPE, data.size // 10)}):
        first = (data.size - scope_size) // 2 // (PER_PRODUCT * PER_CATEGORY) * (PER_PRODUCT * PER_CATEGORY)
        scope = range(first, first + scope_size)
        scoped = data.scoped_queries(min(len(queries), 160), first, scope_size)
        scoped_truth = exact_truth(data, scoped, scope=scope)
        path = "exact over the scope" if index.kind == "flat" or scope_size <= options.exact_scope_max else "ivf + selector"
        searcher = ServiceSearch(index, np.arange(scope.start, scope.stop, dtype=np.int64))
        found, cost = search_cost(searcher, scoped, batch, min_seconds=0.5)
        params = f"scope {scope_size:,} ids: {path}"
        report(Row(data.size, "service-scoped", params, build, cost * 1000, recall(found, scoped_truth), memory))
    del index
    return [choice]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--dim", type=int, default=1280, help="embedding dimension (EfficientNet-Lite0: 1280)")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--batch", type=int, default=16, help="queries per search call (the service's batch)")
    parser.add_argument(
        "--kinds", help=f"comma-separated, of {DEFAULT_KINDS} (default: all, hnsw kinds up to {HNSW_DEFAULT_MAX:,} vectors)"
    )
    parser.add_argument("--model-ms", type=float, help="model time per photo; default: measured here on real photos")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    print(f"machine: {json.dumps(machine())}", flush=True)

    model_ms = args.model_ms
    if model_ms is None:
        from embeddings import load_embedder

        with tempfile.TemporaryDirectory() as tmp:
            settings = Settings(data_dir=Path(tmp))
            embedder = load_embedder(settings.model_spec(), settings.export_dir)
            inputs = model_inputs(embedder, query_photos(args.data, 128))
            photos_per_s, how = best_raw(embedder, settings.export_dir, inputs, args.batch)
        model_ms = 1000 / photos_per_s
        print(f"model: {embedder.info.architecture}, {model_ms:.2f} ms per photo at batch {args.batch} ({how})", flush=True)

    rows: list[Row] = []
    cache = tempfile.TemporaryDirectory(prefix="cs-bench-index-")
    for size in (int(s) for s in args.sizes.split(",")):
        data = Synthetic(args.dim, size, cache=Path(cache.name))
        print(f"{size:>9,} synthetic catalog: similarity of {data.stats()}", flush=True)
        queries = data.queries(args.queries)
        kinds = set((args.kinds or DEFAULT_KINDS).split(","))
        if args.kinds is None and size > HNSW_DEFAULT_MAX:
            kinds -= HNSW_KINDS
            print(f"{size:>9,} skipping {', '.join(sorted(HNSW_KINDS))} (slow to build at this size: name them in --kinds)")
        rows += run_size(data, queries, args.batch, model_ms, kinds, lambda line: print(line, flush=True))

    options = Settings().index_options()
    print(f"\nthe service's index by size (index_ivf_min_vectors={options.ivf_min_vectors:,}, nprobe={options.nprobe}):")
    for size in sorted({r.size for r in rows}):
        flat = next((r for r in rows if r.size == size and r.kind == "flat"), None)
        service = next((r for r in rows if r.size == size and r.kind == "service"), None)
        kind = options.kind_for(size)
        line = f"  {size:>9,}: {kind}"
        if service is not None:
            share = service.query_ms / model_ms * 100
            line += f" ({service.params}): {service.query_ms:.3f} ms/query = {share:.1f}% of the model's time per photo"
            line += f", recall@10 {service.recall10:.3f}, built in {service.build_s:.0f} s"
        if flat is not None:
            line += f"; flat: {flat.query_ms:.3f} ms/query = {flat.query_ms / model_ms * 100:.1f}%"
        print(line)

    print("\ncheapest configuration with recall@10 >= 0.95, per size:")
    choice: dict[int, Row] = {}
    for size in sorted({r.size for r in rows}):
        good = [r for r in rows if r.size == size and r.recall10 >= 0.95 and r.kind != "service-scoped"]
        if good:
            choice[size] = min(good, key=lambda r: r.query_ms)
            r = choice[size]
            share = r.query_ms / model_ms * 100
            print(f"  {size:>9,}: {r.kind} {r.params}: {r.query_ms:.3f} ms/query = {share:.1f}% of the model's time per photo")
    if args.json:
        args.json.write_text(json.dumps({"model_ms": model_ms, "rows": [r.__dict__ for r in rows]}, indent=2))
    cache.cleanup()
    print(f"load: {os.getloadavg()}")


if __name__ == "__main__":
    main()
