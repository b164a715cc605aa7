"""Import jobs are claimed by one process: replicas of the service on one database never run a job twice, take over
a job whose worker stopped renewing its lease (resuming at its checkpoint, each image imported exactly once), and a
worker that lost its claim writes nothing more. On SQLite and PostgreSQL."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import update

from cli.main import cli
from service.access.api_keys import Principal
from service.catalog.writer import ImportRow, ImportSummary
from service.config import Settings
from service.core import ServiceCore
from service.imports.job_store import ImportJobRow, ImportJobStore, LeaseLost, Progress
from service.imports.jobs import LEFTOVER_MIN_AGE_S, ImportJobs, new_owner_id
from service.imports.runner import archive_path, run_import_job, work_path
from tests.archives import zip_bytes
from tests.helpers import sha256, tiny_settings
from tests.service.api.imports_helpers import catalog_rows, folder_members, leftovers, photos

pytestmark = pytest.mark.both_databases

LEASE_S = 1.5
CHUNK = 2


@pytest.fixture
def settings(data_dir: Path, database_url: str | None) -> Settings:
    url = {"database_url": database_url} if database_url else {}
    return tiny_settings(data_dir, import_lease_s=LEASE_S, import_chunk_rows=CHUNK, **url)


def _submit(core: ServiceCore, settings: Settings, images: list[bytes], product: str = "runner") -> str:
    """Queue an import of `images` (a zip of real JPEG, PNG and WebP files) as an admin key would; no worker runs."""
    key, _ = core.keys.create("admin", [], "importer")
    archive = zip_bytes(folder_members("Acme", product, "authentic", images))
    job: dict[str, Any] = ImportJobs(settings, lambda: core).submit(archive, Principal(key["key_id"], "admin", frozenset()))
    return str(job["job_id"])


def _serving(core: ServiceCore) -> Callable[[], ServiceCore | None]:
    return lambda: core


def _row(store: ImportJobStore, job_id: str) -> ImportJobRow:
    row = store.get(job_id)
    assert row is not None
    return row


def _wait_finished(store: ImportJobStore, job_ids: list[str], timeout_s: float = 30.0) -> list[ImportJobRow]:
    deadline = time.monotonic() + timeout_s
    while True:
        rows = [_row(store, job_id) for job_id in job_ids]
        if all(row.state in ("succeeded", "failed") for row in rows):
            return rows
        assert time.monotonic() < deadline, [(row.job_id, row.state, row.claimed_by) for row in rows]
        time.sleep(0.05)


def _lapse(store: ImportJobStore, job_id: str) -> None:
    """The holder stalls past its lease (a frozen process: no chunk, no heartbeat): its lease ran out long ago."""
    with store._sessions.begin() as session:
        session.execute(update(ImportJobRow).where(ImportJobRow.job_id == job_id).values(lease_until=ImportJobRow.created_at))


def _finish_audits(core: ServiceCore) -> list[str]:
    return sorted(str(entry["target"]) for entry in core.audit.query(action="catalog.import.finish", limit=100))


def test_only_one_process_claims_a_job(core: ServiceCore, settings: Settings) -> None:
    first, second = _submit(core, settings, photos(1)), _submit(core, settings, photos(1, start=1), "trail")
    store_a, store_b = ImportJobStore(core.database), ImportJobStore(core.database)
    a, b = new_owner_id(), new_owner_id()
    assert a != b and str(os.getpid()) in a
    assert store_a.claim(a, 60) == first  # the oldest
    assert store_b.claim(b, 60) == second  # the first is held: the next one
    assert store_b.claim(b, 60) == second and store_a.claim(a, 60) == first  # each keeps its own
    assert store_b.claim("c", 60) is None  # both held
    assert not store_b.renew(first, b, 60) and store_a.renew(first, a, 60)
    assert store_a.release(first, a) and not store_a.release(first, a)
    assert store_b.claim("c", 60) == first  # released: free at once


def test_simultaneous_claims_get_each_job_once(core: ServiceCore, settings: Settings) -> None:
    jobs = [_submit(core, settings, photos(1, start=i), f"p{i}") for i in range(3)]
    store, workers = ImportJobStore(core.database), 8
    barrier, claimed = threading.Barrier(workers), dict[int, str | None]()

    def claim(n: int) -> None:
        barrier.wait()
        claimed[n] = store.claim(f"worker-{n}", 60)

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    won = sorted(job for job in claimed.values() if job is not None)
    assert won == sorted(jobs)  # every job claimed, none twice
    for n, job_id in claimed.items():
        if job_id is not None:
            assert _row(store, job_id).claimed_by == f"worker-{n}"


def test_two_workers_on_one_database_run_each_job_once(make_core: Callable[[Settings], ServiceCore], settings: Settings) -> None:
    """Two replicas (each its own core and worker) on one database and data directory, three jobs queued."""
    cores = [make_core(settings), make_core(settings)]
    batches = [photos(5, start=10 * i) for i in range(3)]
    jobs = [_submit(cores[0], settings, images, f"p{i}") for i, images in enumerate(batches)]
    replicas = [ImportJobs(settings, _serving(core)) for core in cores]
    for replica in replicas:
        replica.start()
    try:
        rows = _wait_finished(ImportJobStore(cores[0].database), jobs)
    finally:
        for replica in replicas:
            replica.stop()
    assert [(row.state, row.rows_done, row.images_added, row.duplicates_skipped) for row in rows] == [("succeeded", 5, 5, 0)] * 3
    assert {row.claimed_by for row in rows} <= {replica.owner for replica in replicas}
    assert _finish_audits(cores[0]) == sorted(jobs)  # each job finished once
    assert sorted(r[3] for r in catalog_rows(settings)) == sorted(sha256(d) for images in batches for d in images)
    assert leftovers(settings.storage.data_dir) == []


class StopAfter(threading.Event):
    """A worker's stop flag that is set at its `checks`-th look (the runner looks once before each chunk)."""

    def __init__(self, checks: int) -> None:
        super().__init__()
        self.left = checks

    def is_set(self) -> bool:
        self.left -= 1
        if self.left == 0:
            self.set()
        return super().is_set()


def test_a_job_whose_lease_lapses_is_taken_over_and_finished_from_its_checkpoint(
    make_core: Callable[[Settings], ServiceCore], settings: Settings
) -> None:
    core_a, core_b = make_core(settings), make_core(settings)
    images = photos(7)
    job_id = _submit(core_a, settings, images)
    store = ImportJobStore(core_a.database)
    a = "replica-a"
    assert store.claim(a, LEASE_S) == job_id
    run_import_job(core_a, store, job_id, StopAfter(3), a)  # two chunks, then A stops renewing (and never releases)
    row = _row(store, job_id)
    assert (row.state, row.position, row.images_added, row.claimed_by) == ("running", 4, 4, a)
    # what A's crash left beside the archive: a half-extracted work folder of its own
    half_written = work_path(settings, job_id, a) / "members" / "Acme" / "runner"
    half_written.mkdir(parents=True)
    (half_written / "p4.png").write_bytes(b"\x89PNG\r\n\x1a\n trunc")

    b = ImportJobs(settings, lambda: core_b)
    started = time.monotonic()
    b.start()
    try:
        assert ImportJobStore(core_b.database).claim("replica-c", LEASE_S) is None  # A's lease is still live
        [row] = _wait_finished(store, [job_id])
        took = time.monotonic() - started
    finally:
        b.stop()
    assert took >= LEASE_S / 2  # B waited for the lease to lapse (from A's last renewal, a chunk before it stopped)
    assert (row.state, row.claimed_by, row.failure) == ("succeeded", b.owner, None)
    # resumed at the checkpoint: nothing before it done again, each image imported exactly once
    assert (row.rows_total, row.rows_done, row.images_added, row.duplicates_skipped, row.error_count) == (7, 7, 7, 0, 0)
    assert sorted(r[3] for r in catalog_rows(settings)) == sorted(sha256(d) for d in images)
    assert len(core_a.audit.query(action="catalog.add", limit=100)) == 7
    assert _finish_audits(core_a) == [job_id]
    assert leftovers(settings.storage.data_dir) == []  # the archive and both work folders are gone


def test_a_worker_that_lost_its_claim_writes_nothing_more(
    make_core: Callable[[Settings], ServiceCore], settings: Settings
) -> None:
    """A stalls mid-chunk past its lease; B claims the job. A's chunk in flight lands in the catalog (as duplicates
    for B later), but A's checkpoint, its end and its failure are refused, and it stops."""
    core_a, core_b = make_core(settings), make_core(settings)
    images = photos(6)
    job_id = _submit(core_a, settings, images)
    store_a, store_b = ImportJobStore(core_a.database), ImportJobStore(core_b.database)
    a, b = "replica-a", "replica-b"
    assert store_a.claim(a, LEASE_S) == job_id
    real_import_rows = core_a.writer.import_rows
    calls: list[int] = []

    def stalls_in_second_chunk(rows: Sequence[ImportRow], show_progress: bool = False, actor: str = "system") -> ImportSummary:
        calls.append(len(rows))
        if len(calls) == 2:
            # B takes it over while A's chunk is in flight. A's heartbeat thread is still alive here (a truly frozen
            # process's is not) and may renew between the lapse and B's claim: lapse again until B holds it.
            for _ in range(50):
                _lapse(store_b, job_id)
                if store_b.claim(b, 60) == job_id:
                    break
            assert _row(store_b, job_id).claimed_by == b
        return real_import_rows(rows, show_progress, actor)

    core_a.writer.import_rows = stalls_in_second_chunk  # type: ignore[method-assign]
    run_import_job(core_a, store_a, job_id, threading.Event(), a)
    assert calls == [2, 2]  # A stopped after the chunk in flight
    row = _row(store_b, job_id)
    assert (row.state, row.claimed_by, row.position, row.rows_done, row.images_added) == ("running", b, 2, 2, 2)
    assert archive_path(settings, job_id).is_file()  # B needs it
    assert not work_path(settings, job_id, a).exists()  # A cleaned its own up
    # every write A might still try is refused, and changes nothing
    step = Progress(rows=2, position=4, added=2, duplicates=0, errors=[])
    with pytest.raises(LeaseLost):
        store_a.start(job_id, a, LEASE_S)
    with pytest.raises(LeaseLost):
        store_a.advance(job_id, a, LEASE_S, step)
    with pytest.raises(LeaseLost):
        store_a.finish(job_id, a, "failed", "A's late failure")
    assert not store_a.renew(job_id, a, LEASE_S) and not store_a.release(job_id, a)
    assert _row(store_b, job_id).position == 2 and _row(store_b, job_id).lease_until == row.lease_until

    run_import_job(core_b, store_b, job_id, threading.Event(), b)
    row = _row(store_b, job_id)
    assert (row.state, row.rows_done, row.images_added, row.duplicates_skipped) == ("succeeded", 6, 4, 2)
    assert sorted(r[3] for r in catalog_rows(settings)) == sorted(sha256(d) for d in images)  # each exactly once
    assert _finish_audits(core_b) == [job_id]
    assert leftovers(settings.storage.data_dir) == []


def test_leftover_cleanup_spares_what_another_replica_still_uses(core: ServiceCore, settings: Settings) -> None:
    store = ImportJobStore(core.database)
    running, finished = _submit(core, settings, photos(1)), _submit(core, settings, photos(1, start=1), "trail")
    assert store.claim("replica-b", 60) == running  # another replica runs it, with a work folder of its own
    assert store.claim("replica-f", 60) == finished
    store.start(finished, "replica-f", 60)
    store.finish(finished, "replica-f", "succeeded")
    folder = archive_path(settings, running).parent
    old = time.time() - 2 * LEFTOVER_MIN_AGE_S
    files = {
        "live work": work_path(settings, running, "replica-b"),  # kept, however old: its holder is alive
        "dead work": work_path(settings, running, "replica-a"),  # an old folder of a process that lost the job
        "finished archive": archive_path(settings, finished),
        "finished work": work_path(settings, finished, "replica-f"),
        "new orphan": folder / "imp_000000000000000000000001.archive",  # a submit in flight on another replica
        "old orphan": folder / "imp_000000000000000000000002.archive",  # a crash inside a submit, long ago
    }
    for name, path in files.items():
        if name.endswith("work"):
            path.mkdir(parents=True)
        else:
            path.write_bytes(b"PK")
        if name != "new orphan":
            os.utime(path, (old, old))
    os.utime(archive_path(settings, running), (old, old))  # an old archive of an unfinished job: kept

    ImportJobs(settings, lambda: core)._remove_leftovers(store)
    kept = {name for name, path in files.items() if path.exists()}
    assert kept == {"live work", "new orphan"}
    assert archive_path(settings, running).is_file()


def test_the_lease_is_set_by_flag_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().imports.lease_s == 30.0
    monkeypatch.setenv("COUNTERFEIT_SCAN_IMPORT_LEASE_S", "1.5")
    assert Settings().imports.lease_s == 1.5
    help_text = CliRunner().invoke(cli, ["serve", "--help"]).output
    assert "--import-lease-s" in help_text
    assert Settings(import_lease_s=2).imports.lease_s == 2.0  # what the flag passes
