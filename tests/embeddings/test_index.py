"""The FAISS index on its own, and its life across core restarts: load, rebuild, repair."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from embeddings import VectorIndex
from service.config import Settings
from service.core import ServiceCore
from service.scanning.photo_prep import PhotoInput
from tests import imaging
from tests.helpers import add_reference, tiny_settings

FINGERPRINT = "ab" * 32


def unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return np.asarray(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), dtype=np.float32)


# --- VectorIndex -------------------------------------------------------------------------------------------------
def test_search_returns_nearest_first_with_cosine_similarity() -> None:
    index = VectorIndex(16, FINGERPRINT)
    vectors = unit_rows(5, 16)
    index.add(np.array([10, 11, 12, 13, 14]), vectors)
    assert len(index) == 5
    hits = index.search(vectors, k=3)
    for row, expected in zip(hits, [10, 11, 12, 13, 14], strict=True):
        assert row[0].id == expected
        assert row[0].similarity == pytest.approx(1.0, abs=1e-5)
        sims = [h.similarity for h in row]
        assert sims == sorted(sims, reverse=True)
        assert len(row) == 3


def test_add_replaces_and_remove_deletes() -> None:
    index = VectorIndex(8, FINGERPRINT)
    first, second = unit_rows(2, 8, seed=1)
    index.add(np.array([7]), first[None])
    index.add(np.array([7]), second[None])
    assert len(index) == 1
    assert np.allclose(index.reconstruct(7), second)
    assert index.remove(np.array([7, 99])) == 1
    assert len(index) == 0
    assert index.search(second[None], k=5) == [[]]
    assert index.remove(np.array([], dtype=np.int64)) == 0


def test_allowed_ids_restrict_the_search() -> None:
    index = VectorIndex(8, FINGERPRINT)
    vectors = unit_rows(6, 8, seed=2)
    index.add(np.arange(100, 106), vectors)
    hits = index.search(vectors[:2], k=10, allowed_ids=np.array([103, 105]))
    assert [{h.id for h in row} for row in hits] == [{103, 105}, {103, 105}]
    assert index.search(vectors[:1], k=10, allowed_ids=np.array([], dtype=np.int64)) == [[]]
    assert index.search(vectors[:1], k=0) == [[]]
    assert index.search(np.empty((0, 8), dtype=np.float32), k=3) == []


def test_wrong_shape_is_refused() -> None:
    index = VectorIndex(8, FINGERPRINT)
    with pytest.raises(ValueError, match="dim 8"):
        index.add(np.array([1]), np.ones((1, 4), dtype=np.float32))
    with pytest.raises(ValueError):
        index.add(np.array([1, 2]), np.ones((1, 8), dtype=np.float32))


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    index = VectorIndex(12, FINGERPRINT, revision=7)
    vectors = unit_rows(4, 12, seed=3)
    index.add(np.array([3, 1, 4, 15]), vectors)
    path = tmp_path / "nested" / "idx.faiss"
    index.save(path)
    assert not list(path.parent.glob("*.tmp"))
    loaded = VectorIndex.load(path)
    assert (loaded.dim, loaded.fingerprint, loaded.revision) == (12, FINGERPRINT, 7)
    assert loaded.version == index.version == f"{FINGERPRINT[:12]}-r7"
    assert sorted(loaded.ids().tolist()) == [1, 3, 4, 15]
    assert np.allclose(loaded.reconstruct(4), vectors[2])
    assert loaded.search(vectors[3:], k=1)[0][0].id == 15
    # The loaded index keeps working as an id-mapped index.
    loaded.add(np.array([99]), vectors[:1])
    assert loaded.remove(np.array([3])) == 1
    assert sorted(loaded.ids().tolist()) == [1, 4, 15, 99]


def test_load_refuses_a_foreign_file(tmp_path: Path) -> None:
    path = tmp_path / "x.faiss"
    path.write_bytes(b"definitely not an index")
    with pytest.raises(ValueError, match="not a counterfeit-scan index"):
        VectorIndex.load(path)


# --- core restarts -------------------------------------------------------------------------------------------
MakeEngine = Callable[[Settings], ServiceCore]


def add_refs(core: ServiceCore, seeds: list[int], label: str = "authentic") -> dict[int, str]:
    return {
        seed: core.writer.add_reference(
            PhotoInput(imaging.jpeg(seed), f"{seed}.jpg", "image/jpeg"), "Acme", "runner", label
        ).ref.image_id
        for seed in seeds
    }


def top_match(core: ServiceCore, seed: int) -> tuple[str, float]:
    result = core.pipeline.scan([PhotoInput(imaging.jpeg(seed))], record=False).model_dump()
    best = result["images"][0]["matches"][0]
    return best["image_id"], best["similarity"]


def assert_finds(core: ServiceCore, ids: dict[int, str]) -> None:
    for seed, image_id in ids.items():
        found, similarity = top_match(core, seed)
        assert found == image_id
        assert similarity > 0.999


def test_index_is_loaded_after_a_restart(make_core: MakeEngine, settings: Settings) -> None:
    first = make_core(settings)
    ids = add_refs(first, [1, 2, 3])
    version = first.model.index.version
    assert version.endswith("-r3")
    first.close()  # saves the changed index
    saved = first.index_keeper.index_path
    assert VectorIndex.load(saved).version == version
    mtime = saved.stat().st_mtime_ns

    second = make_core(settings)
    assert second.model.index.version == version
    assert len(second.model.index) == 3
    assert saved.stat().st_mtime_ns == mtime  # loaded as is, not rebuilt and rewritten
    assert_finds(second, ids)


def test_missing_index_file_is_rebuilt_from_stored_vectors(make_core: MakeEngine, settings: Settings) -> None:
    first = make_core(settings)
    ids = add_refs(first, [4, 5, 6])
    version = first.model.index.version
    first.close()
    first.index_keeper.index_path.unlink()
    # Without the blobs the images cannot be re-embedded: the rebuild must use the vectors in the catalog.
    shutil.rmtree(settings.blob_dir)

    second = make_core(settings)
    assert second.model.index.version == version
    assert len(second.model.index) == 3
    assert second.index_keeper.index_path.is_file()
    assert_finds(second, ids)


def test_images_without_stored_vectors_are_re_embedded_from_blobs(make_core: MakeEngine, settings: Settings) -> None:
    first = make_core(settings)
    ids = add_refs(first, [7, 8])
    fingerprint = first.model.embedder.info.fingerprint
    keys, before = first.catalog.stored_vectors(fingerprint, first.model.embedder.info.dim)
    first.catalog.drop_vectors(fingerprint)
    first.close()
    first.index_keeper.index_path.unlink()

    second = make_core(settings)
    assert len(second.model.index) == 2
    keys_after, after = second.catalog.stored_vectors(fingerprint, second.model.embedder.info.dim)
    order = np.argsort(keys)
    order_after = np.argsort(keys_after)
    assert np.array_equal(keys[order], keys_after[order_after])
    assert np.allclose(before[order], after[order_after], atol=1e-5)
    assert_finds(second, ids)


def test_stale_index_is_repaired(make_core: MakeEngine, settings: Settings, tmp_path: Path) -> None:
    first = make_core(settings)
    ids = add_refs(first, [10, 11])
    first.close()
    old_copy = tmp_path / "old.faiss"
    shutil.copy(first.index_keeper.index_path, old_copy)

    second = make_core(settings)
    ids.update(add_refs(second, [12]))
    deleted = ids.pop(10)
    assert second.writer.delete_reference(deleted) is not None
    revision = second.catalog.revision()
    second.close()
    shutil.copy(old_copy, second.index_keeper.index_path)  # the catalog moved on behind this index file
    assert VectorIndex.load(second.index_keeper.index_path).revision < revision

    third = make_core(settings)
    assert third.model.index.revision == revision
    assert len(third.model.index) == 2
    assert set(third.model.index.ids().tolist()) == {ref.key for ref in third.catalog.all_images()}
    assert VectorIndex.load(third.index_keeper.index_path).revision == revision  # repaired index written back
    assert_finds(third, ids)
    result = third.pipeline.scan([PhotoInput(imaging.jpeg(10))], record=False).model_dump()
    assert deleted not in {m["image_id"] for m in result["images"][0]["matches"]}


def test_unreadable_index_file_is_replaced(make_core: MakeEngine, settings: Settings) -> None:
    first = make_core(settings)
    ids = add_refs(first, [13, 14])
    first.close()
    first.index_keeper.index_path.write_bytes(b"CSIDX1\n garbage")

    second = make_core(settings)
    assert len(second.model.index) == 2
    assert VectorIndex.load(second.index_keeper.index_path).revision == second.catalog.revision()
    assert_finds(second, ids)


def test_rebuild_index_re_embeds_everything(make_core: MakeEngine, settings: Settings) -> None:
    core = make_core(settings)
    ids = add_refs(core, [15, 16, 17])
    core.writer.delete_reference(ids.pop(16))
    rebuilt = core.index_keeper.rebuild()
    assert rebuilt is core.model.index
    assert len(rebuilt) == 2
    assert rebuilt.revision == core.catalog.revision()
    assert VectorIndex.load(core.index_keeper.index_path).version == rebuilt.version
    assert_finds(core, ids)


def test_index_is_saved_periodically_while_serving(make_client: Callable[..., TestClient], data_dir: Path) -> None:
    client = make_client(tiny_settings(data_dir, index_save_interval_s=0.05))
    added = add_reference(client, imaging.jpeg(20))
    path = next((data_dir / "index").glob("*.faiss"))
    deadline = time.monotonic() + 10
    while VectorIndex.load(path).version != added["index_version"]:
        assert time.monotonic() < deadline, "index file never caught up with the catalog"
        time.sleep(0.05)
    assert len(VectorIndex.load(path)) == 1


def test_a_running_service_follows_catalog_changes_made_elsewhere(
    make_client: Callable[..., TestClient], make_core: Callable[[Settings], ServiceCore], data_dir: Path
) -> None:
    """`catalog import` from the CLI while the service runs: the service serves the new images within seconds."""
    settings = tiny_settings(data_dir, index_save_interval_s=0.05)
    client = make_client(settings)
    other_process = make_core(settings)  # another core on the same data dir, as the CLI would open
    added = other_process.writer.add_reference(PhotoInput(imaging.jpeg(31)), "Acme", "runner", "counterfeit").ref
    deadline = time.monotonic() + 10
    while client.get("/readyz").json()["index_size"] != 1:
        assert time.monotonic() < deadline, "the service never picked up the new image"
        time.sleep(0.05)
    result = client.post("/v1/scan", files=[("images", ("q.jpg", imaging.jpeg(31), "image/jpeg"))]).json()
    assert result["images"][0]["matches"][0]["image_id"] == added.image_id
