"""The index kind chosen by catalog size: IVF above `index_ivf_min_vectors` (thresholds lowered here), its recall
against exact search, scoped search, writes, persistence, and the core building the right kind."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import pytest

from embeddings import VectorIndex
from embeddings.index import IndexOptions
from service.config import Settings
from service.core import ServiceCore
from service.scanning.photo_prep import PhotoInput
from tests import imaging
from tests.helpers import tiny_settings

FINGERPRINT = "cd" * 32
DIM = 32


def clustered(n: int, dim: int = DIM, clusters: int = 150, seed: int = 0) -> np.ndarray:
    """Unit vectors around `clusters` centres (photos of products), like a catalog's embeddings."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    vectors = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return np.asarray(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), dtype=np.float32)


def near(vectors: np.ndarray, seed: int) -> np.ndarray:
    """New photos of the same products: the vectors, perturbed."""
    rng = np.random.default_rng(seed)
    moved = vectors + 0.3 * rng.standard_normal(vectors.shape).astype(np.float32)
    return np.asarray(moved / np.linalg.norm(moved, axis=1, keepdims=True), dtype=np.float32)


def build(n: int, options: IndexOptions, first_id: int = 1000) -> tuple[VectorIndex, np.ndarray, np.ndarray]:
    index = VectorIndex(DIM, FINGERPRINT, options=options)
    ids, vectors = np.arange(first_id, first_id + n, dtype=np.int64), clustered(n)
    index.add(ids, vectors)
    index.refit()
    return index, ids, vectors


def exact(ids: np.ndarray, vectors: np.ndarray, queries: np.ndarray, k: int) -> list[list[int]]:
    sims = queries @ vectors.T
    return [ids[np.argsort(-row, kind="stable")[:k]].tolist() for row in sims]


def hit_ids(index: VectorIndex, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[list[int]]:
    return [[hit.id for hit in row] for row in index.search(queries, k, allowed)]


IVF = IndexOptions(ivf_min_vectors=1_000, nprobe=16, rerank=30)  # 32 dims: coarse 4-bit codes, more re-ranking


# --- kind by size ------------------------------------------------------------------------------------------------
def test_kind_follows_the_size_with_hysteresis() -> None:
    options = IndexOptions(ivf_min_vectors=1_000)
    assert options.kind_for(999) == "flat"
    assert options.kind_for(1_000) == "ivf"
    assert options.kind_for(600, current="ivf") == "ivf"  # deletes just below the threshold keep ivf
    assert options.kind_for(499, current="ivf") == "flat"
    assert options.nlist_for(1_000_000) == 4_000  # 4 x sqrt(n)
    assert options.nlist_for(40) == 10  # never fewer than 4 training points per list
    assert IndexOptions(nlist=123).nlist_for(10_000) == 123
    assert Settings(index_ivf_min_vectors=5, index_nprobe=3).index_options() == IndexOptions(ivf_min_vectors=5, nprobe=3)


def test_below_the_threshold_the_index_stays_flat_and_exact() -> None:
    index, ids, vectors = build(999, IVF)
    assert index.kind == "flat" and index.nlist == 0
    assert index.version == f"{FINGERPRINT[:12]}-r0"
    queries = near(vectors[:50], seed=1)
    assert hit_ids(index, queries, 10) == exact(ids, vectors, queries, 10)


def test_ivf_above_the_threshold_finds_what_exact_search_finds() -> None:
    index, ids, vectors = build(3_000, IVF)
    assert index.kind == "ivf"
    assert index.nlist == IVF.nlist_for(3_000) and index.trained_size == 3_000
    assert index.version == f"{FINGERPRINT[:12]}-ivf{index.nlist}-r0"
    queries = near(vectors[:300], seed=2)
    truth = exact(ids, vectors, queries, 10)
    found = index.search(queries, 10)
    recall = np.mean([len({h.id for h in row} & set(t)) / 10 for row, t in zip(found, truth, strict=True)])
    assert recall >= 0.95
    for row, query in zip(found, queries, strict=True):
        assert len(row) == 10
        sims = [hit.similarity for hit in row]
        assert sims == sorted(sims, reverse=True)
        # re-ranked on the stored vectors: the similarities are exact, not those of the 8-bit codes
        expected = vectors[np.array([hit.id for hit in row]) - 1000] @ query
        np.testing.assert_allclose(sims, expected, atol=1e-5)


def test_an_ivf_index_is_retrained_once_it_doubled_and_goes_flat_below_half_the_threshold() -> None:
    index, _, _ = build(1_200, IVF)
    assert (index.kind, index.trained_size) == ("ivf", 1_200)
    more = clustered(1_100, seed=5)
    index.add(np.arange(5000, 6100), more)  # 2,300 <= 2 x 1,200: added straight into the trained lists
    assert index.refit() is False
    assert hit_ids(index, more[:1], 1) == [[5000]]
    index.add(np.arange(7000, 7200), clustered(200, seed=6))  # 2,500 > 2 x 1,200
    assert index.refit() is True
    assert (index.trained_size, index.nlist) == (2_500, IVF.nlist_for(2_500))
    assert index.refit() is False
    index.remove(index.ids()[450:])
    assert len(index) == 450 and index.refit() is True  # below half the threshold
    assert index.kind == "flat"
    assert index.refit() is False


# --- scopes ------------------------------------------------------------------------------------------------------
def test_small_scopes_are_searched_exactly() -> None:
    index, ids, vectors = build(3_000, IVF)
    allowed = ids[::17]
    queries = near(vectors[:100], seed=3)
    in_scope = np.isin(ids, allowed)
    assert hit_ids(index, queries, 10, allowed) == exact(ids[in_scope], vectors[in_scope], queries, 10)
    # ids the index does not hold are ignored; a scope of nothing known gives no hits
    assert hit_ids(index, queries[:1], 3, np.array([1000, 99_999])) == [[1000]]
    assert hit_ids(index, queries[:2], 3, np.array([99_999])) == [[], []]


def test_wide_scopes_go_through_the_ivf_and_only_return_allowed_ids() -> None:
    index, ids, vectors = build(3_000, IndexOptions(ivf_min_vectors=1_000, exact_scope_max=10, rerank=30))
    allowed = ids[ids % 3 == 0]  # 1,000 ids spread over every list
    queries = near(vectors[:200], seed=4)
    in_scope = np.isin(ids, allowed)
    truth = exact(ids[in_scope], vectors[in_scope], queries, 10)
    for nprobe in (2, 32):  # 2 lists hold ~9 in-scope ids: queries short of hits are probed again, wider
        index.options = IndexOptions(ivf_min_vectors=1_000, exact_scope_max=10, nprobe=nprobe, rerank=30)
        found = hit_ids(index, queries, 10, allowed)
        assert all(set(row) <= set(allowed.tolist()) and len(row) == 10 for row in found)
    assert np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]) >= 0.95


# --- writes and persistence --------------------------------------------------------------------------------------
def test_remove_and_replace_in_an_ivf_index() -> None:
    index, ids, vectors = build(2_000, IVF)
    assert index.remove(np.array([1000, 1001, 42])) == 2
    assert len(index) == 1_998
    assert {1000, 1001}.isdisjoint(hit_ids(index, vectors[:2], 10)[0] + hit_ids(index, vectors[:2], 10)[1])
    replacement = vectors[500]
    index.add(np.array([1002]), replacement[None])  # 1002 now looks exactly like 1500
    assert len(index) == 1_998
    np.testing.assert_array_equal(index.reconstruct(1002), replacement)
    assert sorted(hit_ids(index, replacement[None], 3)[0][:2]) == [1002, 1500]  # once each, despite its old code
    assert 1002 not in hit_ids(index, vectors[2:3], 10)[0][:1]
    index.add(np.array([1000]), vectors[:1])  # a removed id comes back
    assert hit_ids(index, vectors[:1], 1) == [[1000]]
    index.add(ids[10:20], vectors[10:20])  # the same vectors again: nothing changes
    assert len(index) == 1_999
    assert sorted(index.ids().tolist()) == sorted(set(ids.tolist()) - {1001})
    assert index.stale_codes == 3  # 1000, 1001 and 1002's old codes, until a refit compacts them
    assert index.refit() is False  # 3 stale codes: not worth rewriting the lists
    index.remove(ids[100:400])
    assert index.stale_codes == 303 and index.refit() is True
    assert (index.stale_codes, index.trained_size, len(index)) == (0, 2_000, 1_699)
    assert hit_ids(index, vectors[:1], 1) == [[1000]]
    for row in index.search(near(vectors[400:450], seed=8), 10):
        assert len(row) == 10 and all(hit.id < 1100 or hit.id >= 1400 for hit in row)


def test_ivf_index_round_trips_through_a_file(tmp_path: Path) -> None:
    index, ids, vectors = build(2_500, IVF)
    index.revision = 7
    path = tmp_path / "idx.faiss"
    index.save(path)
    loaded = VectorIndex.load(path, IVF)
    assert (loaded.kind, loaded.nlist, loaded.trained_size) == ("ivf", index.nlist, 2_500)
    assert loaded.version == index.version == f"{FINGERPRINT[:12]}-ivf{index.nlist}-r7"
    queries = near(vectors[:50], seed=7)
    assert loaded.search(queries, 10) == index.search(queries, 10)
    assert loaded.search(queries, 10, ids[:100]) == index.search(queries, 10, ids[:100])
    np.testing.assert_array_equal(loaded.reconstruct(1234), vectors[234])
    assert loaded.remove(np.array([1000])) == 1
    loaded.add(np.array([1]), vectors[:1])
    assert hit_ids(loaded, vectors[:1], 1) == [[1]]
    assert len(loaded) == 2_500


def test_a_truncated_ivf_file_is_refused(tmp_path: Path) -> None:
    index, _, _ = build(1_500, IVF)
    path = tmp_path / "idx.faiss"
    index.save(path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises((ValueError, RuntimeError)):
        VectorIndex.load(path)


def test_files_of_the_first_format_still_load(tmp_path: Path) -> None:
    """CSIDX1: header without a kind, then one serialized IndexIDMap2(IndexFlatIP)."""
    vectors = clustered(20)
    flat = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
    flat.add_with_ids(vectors, np.arange(20, dtype=np.int64))
    header = json.dumps({"dim": DIM, "fingerprint": FINGERPRINT, "revision": 3}).encode()
    path = tmp_path / "old.faiss"
    path.write_bytes(b"CSIDX1\n" + len(header).to_bytes(8, "little") + header + faiss.serialize_index(flat).tobytes())
    loaded = VectorIndex.load(path)
    assert (loaded.kind, loaded.revision, len(loaded)) == ("flat", 3, 20)
    assert hit_ids(loaded, vectors[5:6], 1) == [[5]]


# --- the core ----------------------------------------------------------------------------------------------------
def add_photos(core: ServiceCore, seeds: range) -> dict[int, str]:
    return {
        seed: core.writer.add_reference(PhotoInput(imaging.jpeg(seed)), "Acme", f"p{seed % 3}", "authentic").ref.image_id
        for seed in seeds
    }


def test_the_engine_builds_ivf_for_a_catalog_above_the_threshold(
    make_core: Callable[[Settings], ServiceCore], data_dir: Path
) -> None:
    settings = tiny_settings(data_dir, index_ivf_min_vectors=40, index_exact_scope_max=5)
    first = make_core(settings)
    ids = add_photos(first, range(100, 130))
    assert first.model.index.kind == "flat"  # 30 < 40
    first.close()

    second = make_core(settings)
    assert second.model.index.kind == "flat"
    ids.update(add_photos(second, range(130, 150)))  # 50 images: adds alone do not change the kind...
    assert second.model.index.kind == "flat"
    second.close()

    third = make_core(settings)  # ...the next start does, and writes the ivf index back
    assert third.model.index.kind == "ivf" and third.model.index.trained_size == 50
    assert "-ivf" in third.model.index.version
    assert VectorIndex.load(third.index_keeper.index_path).kind == "ivf"
    for seed in (100, 125, 149):
        result = third.pipeline.scan([PhotoInput(imaging.jpeg(seed))], record=False).model_dump()
        assert result["images"][0]["matches"][0]["image_id"] == ids[seed]
        assert result["index_version"] == third.model.index.version
    scoped = third.pipeline.scan(
        [PhotoInput(imaging.jpeg(101))], brand="Acme", product="p2", record=False
    ).model_dump()  # 17 ids > 5: ivf
    assert scoped["images"][0]["matches"][0]["image_id"] == ids[101]
    assert {m["product"] for m in scoped["images"][0]["matches"]} == {"p2"}

    rebuilt = third.index_keeper.rebuild()
    assert rebuilt.kind == "ivf" and len(rebuilt) == 50
    for image_id in list(ids.values())[:35]:
        third.writer.delete_reference(image_id)
    third.close()
    fourth = make_core(settings)  # 15 < 40 / 2: back to flat
    assert fourth.model.index.kind == "flat" and len(fourth.model.index) == 15


def test_a_copy_refitted_aside_catches_up_with_the_serving_index() -> None:
    options = IndexOptions(ivf_min_vectors=1_000, nprobe=16, rerank=30)
    serving, ids, vectors = build(1_200, IndexOptions(ivf_min_vectors=5_000))  # flat, though 1,200 now calls for ivf
    serving.options = options
    assert serving.needs_refit()
    fresh = serving.copy()
    fresh.refit()
    assert (fresh.kind, serving.kind) == ("ivf", "flat")
    # meanwhile the serving index changes: 100 added, 50 removed
    more_ids, more = np.arange(9_000, 9_100, dtype=np.int64), clustered(100, seed=7)
    serving.add(more_ids, more)
    serving.remove(ids[:50])
    serving.revision = 42
    assert fresh.catch_up(serving) == 150
    assert set(fresh.ids().tolist()) == set(serving.ids().tolist()) and fresh.revision == 42
    assert not fresh.needs_refit()
    queries = more[:20]
    assert [row[0] for row in hit_ids(fresh, queries, 1)] == more_ids[:20].tolist()
    assert not set(ids[:50].tolist()) & {hit for row in hit_ids(fresh, vectors[:50], 10) for hit in row}


def test_a_running_engine_refits_its_index_as_the_catalog_grows_and_shrinks(
    make_core: Callable[[Settings], ServiceCore], data_dir: Path
) -> None:
    core = make_core(tiny_settings(data_dir, index_ivf_min_vectors=40, index_exact_scope_max=5))
    ids = add_photos(core, range(200, 230))
    assert not core.index_keeper.refit() and core.model.index.kind == "flat"  # 30 < 40
    ids.update(add_photos(core, range(230, 250)))  # 50 over HTTP-like writes, no restart

    errors: list[BaseException] = []
    stop = threading.Event()

    def scan_meanwhile() -> None:
        while not stop.is_set():
            try:
                result = core.pipeline.scan([PhotoInput(imaging.jpeg(210))], record=False).model_dump()
                assert result["images"][0]["matches"][0]["image_id"] == ids[210]
            except BaseException as exc:  # reported by the assertion below
                errors.append(exc)

    scanner = threading.Thread(target=scan_meanwhile)
    scanner.start()
    try:
        assert core.index_keeper.refit()
    finally:
        stop.set()
        scanner.join()
    assert errors == []
    kind: str = core.model.index.kind  # (not narrowed by the "flat" above: the index was swapped)
    assert kind == "ivf" and len(core.model.index) == 50 and not core.index_keeper.refit()
    result = core.pipeline.scan([PhotoInput(imaging.jpeg(249))], record=False).model_dump()
    assert result["images"][0]["matches"][0]["image_id"] == ids[249] and "-ivf" in result["index_version"]
    assert core.index_keeper.save_if_dirty() and VectorIndex.load(core.index_keeper.index_path).kind == "ivf"

    for seed in range(200, 235):
        core.writer.delete_reference(ids[seed])
    assert core.index_keeper.refit() and core.model.index.kind == "flat" and len(core.model.index) == 15  # 15 < 40 / 2
