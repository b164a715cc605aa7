"""CatalogRepository and BlobStore on real SQLite files, a real PostgreSQL database, and real directories."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from reference_catalog import BlobStore, CatalogRepository, ImageRef, NewImage, create_catalog_engine
from reference_catalog.models import Product, ReferenceImage
from reference_catalog.records import DuplicateLabelConflict
from service.db.migrate import upgrade_if_behind
from tests.helpers import sha256

FP = "f" * 64


def repo_at(path: Path) -> CatalogRepository:
    engine = create_catalog_engine(f"sqlite:///{path}")
    upgrade_if_behind(engine)
    return CatalogRepository(engine)


@pytest.fixture
def repo(tmp_path: Path, database_url: str | None) -> CatalogRepository:
    if database_url is None:
        return repo_at(tmp_path / "catalog.sqlite3")
    engine = create_catalog_engine(database_url)
    upgrade_if_behind(engine)
    return CatalogRepository(engine)


def new(n: int, brand: str = "Acme", product: str = "runner", label: str = "authentic") -> NewImage:
    return NewImage(brand, product, label, sha256(str(n).encode()), "image/jpeg", 10 + n, 20 + n, f"src-{n}")


def vecs(n: int, dim: int = 4) -> np.ndarray:
    return np.arange(n * dim, dtype=np.float32).reshape(n, dim)


pytestmark = pytest.mark.both_databases  # tests that take `repo` run on SQLite and PostgreSQL


def test_add_images_writes_rows_vectors_and_bumps_the_revision(repo: CatalogRepository) -> None:
    assert repo.revision() == 0
    refs = repo.add_images([new(1), new(2, label="counterfeit")], vecs(2), FP)
    assert repo.revision() == 1
    assert [r.label for r in refs] == ["authentic", "counterfeit"]
    assert all(r.image_id.startswith("ref_") for r in refs)
    assert refs[0].image_id != refs[1].image_id
    got = repo.get_image(refs[0].image_id)
    assert got is not None
    assert (got.brand, got.product, got.sha256, got.width, got.height, got.source) == (
        "Acme",
        "runner",
        sha256(b"1"),
        11,
        21,
        "src-1",
    )
    keys, vectors = repo.stored_vectors(FP, 4)
    assert sorted(keys.tolist()) == sorted(r.key for r in refs)
    assert np.array_equal(vectors[np.argsort(keys)], vecs(2)[np.argsort([r.key for r in refs])])
    assert repo.stored_vectors("0" * 64, 4)[0].size == 0


def test_repeat_returns_the_existing_row_and_conflict_writes_nothing(repo: CatalogRepository) -> None:
    (first,) = repo.add_images([new(1)], vecs(1), FP)
    (again,) = repo.add_images([new(1)], vecs(1), FP)
    assert again.image_id == first.image_id
    assert len(repo.all_images()) == 1
    revision = repo.revision()
    with pytest.raises(DuplicateLabelConflict, match="already in the catalog as authentic"):
        repo.add_images([new(5), new(1, label="counterfeit")], vecs(2), FP)
    # one transaction: the good row before the conflict is not kept either
    assert len(repo.all_images()) == 1
    assert repo.revision() == revision
    assert repo.find_duplicate("Acme", "runner", sha256(b"5")) is None
    # the same bytes for another product are a separate reference
    (other,) = repo.add_images([new(1, product="court")], vecs(1), FP)
    assert other.image_id != first.image_id


def test_insert_images_tells_which_rows_it_wrote(tmp_path: Path) -> None:
    """Two writers on one database: rows the other wrote meanwhile come back as not created, and are audited once."""
    from reference_catalog import AuditLog

    path = tmp_path / "catalog.sqlite3"
    mine, other = repo_at(path), repo_at(path)
    (theirs,) = other.add_images([new(2)], vecs(1), FP, actor="http")
    written = mine.insert_images([new(1), new(2), new(1)], vecs(3), FP, actor="cli")
    assert [created for _, created in written] == [True, False, False]  # the repeat of row 1 within the call as well
    assert written[1][0].image_id == theirs.image_id and written[2][0].image_id == written[0][0].image_id
    audit = AuditLog(mine.engine)
    assert [e["target"] for e in audit.query(actor="cli", action="catalog.add")] == [written[0][0].image_id]
    assert [e["target"] for e in audit.query(actor="http", action="catalog.add")] == [theirs.image_id]
    assert [ref.image_id for ref in mine.add_images([new(3), new(2)], vecs(2), FP)][1] == theirs.image_id


def test_brand_and_product_summaries(repo: CatalogRepository) -> None:
    repo.add_images(
        [
            new(1),
            new(2, label="counterfeit"),
            new(3, product="court", label="counterfeit"),
            new(4, brand="Zeta", product="slide"),
        ],
        vecs(4),
        FP,
    )
    brands = repo.list_brands()
    assert [(b.name, b.products, b.images) for b in brands] == [("Acme", 2, 3), ("Zeta", 1, 1)]
    assert [(p.brand, p.name, p.authentic, p.counterfeit) for p in repo.list_products("Acme")] == [
        ("Acme", "court", 0, 1),
        ("Acme", "runner", 1, 1),
    ]
    assert len(repo.list_products()) == 3
    assert repo.list_products("Nobody") == []


def test_delete_reports_whether_the_blob_is_still_used(repo: CatalogRepository) -> None:
    a, b = repo.add_images([new(1), new(1, product="court")], vecs(2), FP)
    revision = repo.revision()
    deleted = repo.delete_image(a.image_id)
    assert deleted is not None and deleted[0].image_id == a.image_id
    assert deleted[1] is False  # the other product still uses these bytes
    assert repo.revision() == revision + 1
    assert repo.delete_image(a.image_id) is None
    last = repo.delete_image(b.image_id)
    assert last is not None and last[1] is True
    assert repo.all_images() == []
    assert repo.stored_vectors(FP, 4)[0].size == 0
    assert [(x.name, x.images) for x in repo.list_brands()] == [("Acme", 0)]


def test_store_and_drop_vectors(repo: CatalogRepository) -> None:
    refs = repo.add_images([new(1), new(2)], vecs(2), FP)
    repo.store_vectors(FP, [refs[0].key], np.full((1, 4), 9, dtype=np.float32))  # replaces
    repo.store_vectors("e" * 64, [r.key for r in refs], vecs(2))  # a second model's vectors
    keys, vectors = repo.stored_vectors(FP, 4)
    assert len(keys) == 2
    assert np.array_equal(vectors[list(keys).index(refs[0].key)], np.full(4, 9, dtype=np.float32))
    repo.drop_vectors(FP)
    assert repo.stored_vectors(FP, 4)[0].size == 0
    assert len(repo.stored_vectors("e" * 64, 4)[0]) == 2


def test_catalog_persists_in_its_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite3"
    first = repo_at(path)
    (ref,) = first.add_images([new(1)], vecs(1), FP)
    first.engine.dispose()
    second = repo_at(path)
    assert second.revision() == 1
    assert second.get_image(ref.image_id) == ref


def test_blob_store(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    data = b"some image bytes"
    digest = sha256(data)
    path = store.put(digest, data)
    assert path == tmp_path / "blobs" / digest[:2] / digest[2:4] / digest
    assert store.get(digest) == data
    assert store.put(digest, data) == path
    assert not list(path.parent.glob("*.tmp"))
    store.delete(digest)
    assert not path.exists()
    store.delete(digest)  # deleting twice is fine
    for bad in ("../../etc/passwd", digest.upper(), digest[:-1]):
        with pytest.raises(ValueError, match="sha256"):
            store.path(bad)


def test_the_same_photo_committed_by_another_writer_meanwhile_is_a_duplicate(repo: CatalogRepository) -> None:
    """Writer A inserts a photo and holds its transaction open; writer B, which finds no such row yet, inserts the
    same one: B's insert waits for A's commit, fails on the unique key, and B then finds A's row: a duplicate."""
    repo.add_images([new(1)], vecs(1), FP)  # the brand and product exist: A only inserts the image
    photo = new(2)
    answers: list[list[tuple[ImageRef, bool]]] = []
    with Session(repo.engine) as session, session.begin():
        session.add(ReferenceImage(public_id="ref_from_a", product=session.scalars(select(Product)).one(),
                                   sha256=photo.sha256, label="authentic", source=None, media_type="image/jpeg",
                                   width=1, height=1))  # fmt: skip
        session.flush()  # A holds the row (and on SQLite the write lock) until the block ends
        writer_b = threading.Thread(target=lambda: answers.append(repo.insert_images([photo], vecs(1), FP)))
        writer_b.start()
        writer_b.join(1.0)
        assert writer_b.is_alive()  # B waits for A
    writer_b.join(30)
    [[(ref, created)]] = answers
    assert not created and ref.image_id == "ref_from_a"
    assert [r.image_id for r in repo.all_images()].count("ref_from_a") == 1
