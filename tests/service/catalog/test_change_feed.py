"""The catalog's change feed, and service replicas kept in step by it, on SQLite and on PostgreSQL.

Two cores on one database and data directory stand for two replicas of the service (each its own engine, index and
write lock, as two processes would have). What a replica must do: find another replica's additions, relabels and
deletions by reading only the changed images (`follow_catalog` without a full sync), read the whole catalog again only
when the feed cannot bring it up to date (pruned past its index), and, with writers on both at once, end up with the
same index; writers racing on one database take distinct, consecutive revisions, and the feed holds each change once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from sqlalchemy import event, select

from reference_catalog import CatalogRepository, NewImage, create_catalog_engine
from reference_catalog.models import CatalogChange
from service.catalog.writer import ImportRow
from service.config import Settings
from service.core import ServiceCore
from service.runtime import ServiceRuntime
from service.scanning.photo_prep import PhotoInput
from tests import imaging
from tests.helpers import sha256

pytestmark = pytest.mark.both_databases

MakeCore = Callable[[Settings], ServiceCore]


def photo(seed: int) -> PhotoInput:
    return PhotoInput(imaging.jpeg(seed), content_type="image/jpeg")


def top_match(core: ServiceCore, seed: int) -> dict[str, Any] | None:
    """The best catalog match of a scan of photo `seed` on `core` (None: no match at all)."""
    result = core.pipeline.scan([photo(seed)], record=False).model_dump()
    matches: list[dict[str, Any]] = result["images"][0]["matches"]
    return matches[0] if matches else None


def finds(core: ServiceCore, seed: int, image_id: str) -> bool:
    match = top_match(core, seed)
    return match is not None and match["image_id"] == image_id and match["similarity"] > 0.999


def matched_ids(core: ServiceCore, seed: int) -> set[str]:
    """Every catalog image a scan of photo `seed` on `core` matched."""
    result = core.pipeline.scan([photo(seed)], record=False).model_dump()
    return {match["image_id"] for match in result["images"][0]["matches"]}


def feed_rows(core: ServiceCore) -> list[tuple[int, int, str]]:
    with core.database.connect() as connection:
        rows = connection.execute(
            select(CatalogChange.revision, CatalogChange.image_key, CatalogChange.action).order_by(CatalogChange.id)
        )
        return [(int(revision), int(key), str(action)) for revision, key, action in rows]


def same_serving_state(a: ServiceCore, b: ServiceCore) -> None:
    """Index ids, refs (labels included) and near-duplicate hashes agree, and both agree with the catalog."""
    catalog = {ref.key: ref for ref in a.catalog.all_images()}
    for core in (a, b):
        assert set(core.model.index.ids().tolist()) == set(catalog)
        assert core.index_keeper.refs_copy() == catalog
        assert core.index_keeper.near_duplicates.keys() == set(catalog)
        assert core.model.index.revision == core.catalog.revision()


def test_changes_since_names_each_changed_image_with_its_latest_action(make_core: MakeCore, settings: Settings) -> None:
    core = make_core(settings)
    catalog = core.catalog
    start = catalog.revision()
    first = core.writer.add_reference(photo(1), "Acme", "runner", "authentic").ref
    added = catalog.revision()
    second = core.writer.add_reference(photo(2), "Acme", "runner", "authentic").ref
    assert catalog.revision() == added + 1
    core.writer.relabel_reference(first.image_id, "counterfeit")
    relabelled = catalog.revision()
    core.writer.delete_reference(second.image_id)
    deleted = catalog.revision()
    assert (added, relabelled, deleted) == (start + 1, start + 3, start + 4)

    batch = catalog.changes_since(start)
    assert batch is not None
    assert (batch.revision, batch.changes) == (deleted, {first.key: "relabel", second.key: "delete"})
    since_relabel = catalog.changes_since(relabelled)
    assert since_relabel is not None and since_relabel.changes == {second.key: "delete"}
    now = catalog.changes_since(deleted)
    assert now is not None and (now.revision, now.changes) == (deleted, {})
    assert catalog.changes_since(deleted + 1) is None  # an index newer than the catalog: the database was replaced
    assert feed_rows(core) == [
        (added, first.key, "add"),
        (added + 1, second.key, "add"),
        (relabelled, first.key, "relabel"),
        (deleted, second.key, "delete"),
    ]

    # writes that change nothing take no revision and write no row
    assert not core.writer.add_reference(photo(1), "Acme", "runner", "counterfeit").created
    assert core.writer.relabel_reference(first.image_id, "counterfeit") is not None
    assert core.writer.delete_reference(second.image_id) is None
    assert catalog.revision() == deleted and len(feed_rows(core)) == 4
    assert catalog.written_revision() is None

    # an import chunk is one revision, one row per image it created
    rows = [(f"line {i}", photo(10 + i), "Acme", "court", "authentic", None) for i in range(3)]
    summary = core.writer.import_rows([ImportRow(*row) for row in rows])
    assert (summary.added, catalog.revision()) == (3, deleted + 1)
    assert [(revision, action) for revision, _, action in feed_rows(core)[4:]] == [(deleted + 1, "add")] * 3


def test_a_second_replica_follows_adds_relabels_and_deletes_without_a_full_sync(make_core: MakeCore, settings: Settings) -> None:
    a, b = make_core(settings), make_core(settings)
    keeper = b.index_keeper
    assert not keeper.follow_catalog()  # nothing to follow

    added = a.writer.add_reference(photo(1), "Acme", "runner", "authentic").ref
    assert top_match(b, 1) is None  # not followed yet
    assert keeper.follow_catalog()
    assert finds(b, 1, added.image_id)
    assert top_match(b, 1)["label"] == "authentic"  # type: ignore[index]
    assert added.key in keeper.near_duplicates.keys()  # noqa: SIM118 (a set, not a dict)
    assert b.model.index.revision == a.catalog.revision()

    a.writer.relabel_reference(added.image_id, "counterfeit")
    assert keeper.follow_catalog()
    assert top_match(b, 1)["label"] == "counterfeit"  # type: ignore[index]
    assert keeper.refs_copy()[added.key].label == "counterfeit"

    a.writer.delete_reference(added.image_id)
    assert keeper.follow_catalog()
    assert top_match(b, 1) is None and len(b.model.index) == 0
    assert added.key not in keeper.near_duplicates.keys() and keeper.refs_copy() == {}  # noqa: SIM118

    assert (keeper.follow_stats.batches, keeper.follow_stats.changes, keeper.follow_stats.full_syncs) == (3, 3, 0)
    assert not keeper.follow_catalog()
    same_serving_state(a, b)


def test_replicas_writing_at_once_converge(make_core: MakeCore, settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    """Each replica's own writes are searchable at once; the other's come with the next follow, and a replica's own
    writes coming back in the feed are recognised as applied already."""
    a, b = make_core(settings), make_core(settings)
    mine = a.writer.add_reference(photo(1), "Acme", "runner", "authentic").ref
    theirs = b.writer.add_reference(photo(2), "Acme", "runner", "counterfeit").ref
    assert finds(a, 1, mine.image_id) and finds(b, 2, theirs.image_id)
    # b's write followed a's, which b has not seen: b's index stays at the revision it holds every change of
    assert b.model.index.revision == a.catalog.revision() - 2
    a.writer.delete_reference(mine.image_id)
    b.writer.relabel_reference(theirs.image_id, "authentic")
    with caplog.at_level(logging.INFO, logger="service.catalog.index_keeper"):
        assert a.index_keeper.follow_catalog() and b.index_keeper.follow_catalog()
    # a: b's image comes in with its new label, a's own deletion is in step; b: a's image came and went before b
    # saw it, and b's own writes are in step
    assert "1 added, 0 relabelled, 0 removed, 1 in step already" in caplog.text
    assert "0 added, 0 relabelled, 0 removed, 2 in step already" in caplog.text
    assert mine.image_id not in matched_ids(a, 1) | matched_ids(b, 1)
    assert finds(a, 2, theirs.image_id) and top_match(a, 2)["label"] == "authentic"  # type: ignore[index]
    same_serving_state(a, b)
    assert a.index_keeper.follow_stats.full_syncs == b.index_keeper.follow_stats.full_syncs == 0


def test_a_replica_behind_the_start_of_the_feed_reads_the_whole_catalog(
    make_core: MakeCore, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = make_core(settings), make_core(settings)
    refs = [a.writer.add_reference(photo(seed), "Acme", "runner", "authentic").ref for seed in (1, 2, 3)]
    a.writer.delete_reference(refs[0].image_id)
    revision = a.catalog.revision()
    assert a.catalog.prune_changes(revision - 1) == 3  # the three adds; the delete's row is kept
    assert a.catalog.changes_from() == revision - 1
    assert a.catalog.prune_changes(revision - 2) == 0  # never moves back
    assert feed_rows(a) == [(revision, refs[0].key, "delete")]
    assert a.catalog.changes_since(b.model.index.revision) is None
    with caplog.at_level(logging.INFO, logger="service.catalog.index_keeper"):
        assert b.index_keeper.follow_catalog()
    assert "reading the whole catalog again" in caplog.text
    assert b.index_keeper.follow_stats.full_syncs == 1 and b.index_keeper.follow_stats.batches == 0
    assert refs[0].image_id not in matched_ids(b, 1)
    assert finds(b, 2, refs[1].image_id) and finds(b, 3, refs[2].image_id)
    same_serving_state(a, b)
    # from there on, the feed again
    later = a.writer.add_reference(photo(4), "Acme", "runner", "authentic").ref
    assert b.index_keeper.follow_catalog() and finds(b, 4, later.image_id)
    assert b.index_keeper.follow_stats.full_syncs == 1 and b.index_keeper.follow_stats.batches == 1


def test_a_saved_index_is_brought_forward_by_the_feed_at_start(
    make_core: MakeCore, settings: Settings, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A replica starting from an index file saved at an older revision (its own, or another replica's in a shared
    folder) applies the feed's changes since instead of re-reading every stored vector; and a replica may keep its
    index files in a folder of its own (`index_dir`)."""
    a = make_core(settings)
    kept = a.writer.add_reference(photo(1), "Acme", "runner", "authentic").ref
    gone = a.writer.add_reference(photo(2), "Acme", "runner", "authentic").ref
    a.index_keeper.save()
    saved_at = a.model.index.revision
    later = a.writer.add_reference(photo(3), "Acme", "runner", "counterfeit").ref
    a.writer.delete_reference(gone.image_id)

    with caplog.at_level(logging.INFO, logger="service.catalog.index_keeper"):
        b = make_core(settings)  # loads the file a saved at `saved_at`
    assert f"saved index brought from revision {saved_at} to {a.catalog.revision()}" in caplog.text
    assert finds(b, 1, kept.image_id) and finds(b, 3, later.image_id) and gone.image_id not in matched_ids(b, 2)
    same_serving_state(a, b)

    local = settings.updated(index_dir=tmp_path / "replica-c-index")
    c = make_core(local)
    assert c.index_keeper.index_path.parent == tmp_path / "replica-c-index" and c.index_keeper.index_path.is_file()
    assert finds(c, 3, later.image_id)


def test_concurrent_writers_take_distinct_consecutive_revisions(make_core: MakeCore, settings: Settings) -> None:
    """Writers on their own connections (as replicas are) add, relabel and delete at once: each write gets a revision
    of its own, together they are consecutive, and the feed holds every change exactly once, under its write's
    revision."""
    core = make_core(settings)  # the schema
    start = core.catalog.revision()
    writers, writes_each = 6, 8
    made: list[tuple[int, list[tuple[int, str]]]] = []  # (revision, [(key, action)]) of every write
    errors: list[BaseException] = []
    barrier = threading.Barrier(writers)
    lock = threading.Lock()

    def write(worker: int) -> None:
        engine = create_catalog_engine(settings.resolved_database_url)
        repo = CatalogRepository(engine)
        try:
            barrier.wait()
            for i in range(writes_each):
                n = worker * 1000 + i
                new = [
                    NewImage("Acme", f"w{worker}", "authentic", sha256(f"{n}-{j}".encode()), "image/jpeg", 8, 8) for j in (0, 1)
                ]
                refs = repo.add_images(new, np.ones((2, 4), dtype=np.float32), "f" * 64)
                done = [(repo.written_revision(), [(ref.key, "add") for ref in refs])]
                if i % 3 == 1:
                    repo.relabel_image(refs[0].image_id, "counterfeit")
                    done.append((repo.written_revision(), [(refs[0].key, "relabel")]))
                if i % 3 == 2:
                    repo.delete_image(refs[1].image_id)
                    done.append((repo.written_revision(), [(refs[1].key, "delete")]))
                with lock:
                    made.extend((int(revision or 0), changes) for revision, changes in done)
        except BaseException as exc:  # reported by the test
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=write, args=(worker,)) for worker in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    revisions = sorted(revision for revision, _ in made)
    assert revisions == list(range(start + 1, start + 1 + len(made)))  # distinct and consecutive
    assert core.catalog.revision() == revisions[-1]
    expected = sorted((revision, key, action) for revision, changes in made for key, action in changes)
    assert sorted(feed_rows(core)) == expected  # every change once, under its own write's revision
    batch = core.catalog.changes_since(start)
    assert batch is not None and batch.revision == revisions[-1]
    latest: dict[int, str] = {}
    for _, key, action in expected:
        latest[key] = action
    assert batch.changes == latest


def test_a_file_deleted_while_another_replica_commits_the_same_bytes_is_put_back(make_core: MakeCore, settings: Settings) -> None:
    """Replica a deletes the last image of some bytes while replica b adds the same bytes for another product (b's
    `put` found the file still there, so wrote nothing): whichever looks last puts the file back."""
    a, b = make_core(settings), make_core(settings)
    data = imaging.jpeg(7)
    first = a.writer.add_reference(PhotoInput(data), "Acme", "runner", "authentic").ref
    path = a.blobs.path(first.sha256)
    a.catalog.delete_image(first.image_id)  # a's delete committed: no row uses the bytes; a is about to delete the file
    second = b.writer.add_reference(PhotoInput(data), "Acme", "court", "authentic").ref  # b: put found it, commits
    a.writer._delete_file(first.sha256)  # a deletes the file, looks again, finds b's row
    assert path.is_file() and b.blobs.get(second.sha256) == data

    def delete_as_b_commits(*_: Any) -> None:
        """The other order: a's delete of the file lands after b's put (which found it) and before b's commit."""
        path.unlink(missing_ok=True)

    event.listen(b.database, "commit", delete_as_b_commits)
    try:
        third = b.writer.add_reference(PhotoInput(data), "Acme", "slide", "authentic").ref
    finally:
        event.remove(b.database, "commit", delete_as_b_commits)
    assert path.is_file() and b.blobs.get(third.sha256) == data


def test_serve_prunes_the_feed_to_its_last_revisions(make_core: MakeCore, settings: Settings) -> None:
    """The upkeep of `serve` keeps `change_feed_keep_revisions` revisions of the feed; a replica inside them follows by
    the feed, one behind them reads the whole catalog."""
    kept = settings.updated(change_feed_keep_revisions=2)
    a, b = make_core(kept), make_core(kept)
    refs = [a.writer.add_reference(photo(seed), "Acme", "runner", "authentic").ref for seed in (1, 2, 3, 4)]
    revision = a.catalog.revision()
    ServiceRuntime(kept, a)._prune_change_feed(a)  # what the upkeep thread does once a minute
    assert a.catalog.changes_from() == revision - 2
    assert [key for _, key, _ in feed_rows(a)] == [refs[2].key, refs[3].key]
    assert b.index_keeper.follow_catalog() and b.index_keeper.follow_stats.full_syncs == 1
    assert finds(b, 1, refs[0].image_id) and finds(b, 4, refs[3].image_id)
