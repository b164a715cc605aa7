"""`scan-batch --engine ray`: Ray Data actors on read-only cores answer as the local engine does, row for row; a crashed
run resumes with every listing once; actors on every CPU do not hang; a read-only core writes nothing.

One local Ray (2 CPUs) serves the module; each run starts its actors afresh (a few seconds each: they import the
service and load the model)."""

from __future__ import annotations

import json
import logging
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from service.bulk import outputs
from service.catalog.index_snapshot import SnapshotError
from service.core import ReadOnlyCoreError, ServiceCore
from service.db.migrate import _scripts, head_revision
from service.scanning.photo_prep import PhotoInput
from tests import imaging
from tests.bulk_scans import ERRORS, LISTING_IDS, answers, assert_same_answers, by_listing, run, write_listings
from tests.helpers import tiny_settings

ray = pytest.importorskip("ray")

RUN_LIMIT_S = 150  # a run that has not finished by then hangs: fail instead of waiting for ever


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """A local Ray with 2 CPUs, shared by every test here (the CLI uses one already initialised)."""
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


@pytest.fixture
def no_hang() -> Iterator[None]:
    def timed_out(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"scan-batch --engine ray still running after {RUN_LIMIT_S} s: hung")

    previous = signal.signal(signal.SIGALRM, timed_out)
    signal.alarm(RUN_LIMIT_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def assert_like_local(local: dict[str, dict[str, Any]], got: dict[str, dict[str, Any]]) -> None:
    assert sorted(got) == sorted(LISTING_IDS)
    assert {k: v["status"] for k, v in got.items() if "error" in v} == ERRORS  # bad listings: error rows, not a failed job
    for listing_id, answer in local.items():
        if "error" in answer:  # the same error and photo, of the other manifest's folder
            assert (got[listing_id]["status"], len(got[listing_id]["paths"])) == (answer["status"], 1)
        else:
            assert_same_answers(answer, got[listing_id])


def test_two_actors_on_two_cpus_answer_like_the_local_engine(
    ray_cluster: None, no_hang: None, catalog: Path, tmp_path: Path, local_answers: dict[str, dict[str, Any]]
) -> None:
    """JSON lines in and out; two actors reserve both CPUs (the manifest is read on the driver: nothing starves)."""
    out = tmp_path / "ray.jsonl"
    manifest = write_listings(tmp_path / "jsonl", "jsonl")
    result = run("scan-batch", str(manifest), "--out", str(out), "--engine", "ray", "--actors", "2", data_dir=catalog)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["engine"], summary["actors"], summary["unanswered"]) == ("ray", 2, 0)
    assert (summary["scanned"], summary["errors"]) == (len(LISTING_IDS) - len(ERRORS), len(ERRORS))
    assert summary["ray_start_s"] >= 0 and summary["seconds"] > 0 and summary["photos"] == len(LISTING_IDS) - len(ERRORS) + 1
    assert_like_local(local_answers, by_listing(answers(out)))
    snapshot = Path(summary["snapshot"])
    assert snapshot.parent == catalog.resolve() / "index" / "snapshots" and (snapshot / "snapshot.json").is_file()


def test_parquet_in_and_out_on_ray(
    ray_cluster: None, no_hang: None, catalog: Path, tmp_path: Path, local_answers: dict[str, dict[str, Any]]
) -> None:
    pytest.importorskip("pyarrow")
    out = tmp_path / "ray.parquet"
    manifest = write_listings(tmp_path / "parquet", "parquet")
    result = run("scan-batch", str(manifest), "--out", str(out), "--engine", "ray", "--actors", "1", data_dir=catalog)
    assert result.exit_code == 0, result.output
    assert out.is_dir() and list(out.glob("part-*.parquet"))
    assert_like_local(local_answers, by_listing(answers(out)))


class Crash(Exception):
    """The driver stopped from within, mid-run (click would turn a KeyboardInterrupt into an exit status)."""


def test_a_rerun_after_a_crash_answers_every_listing_exactly_once(
    ray_cluster: None, no_hang: None, catalog: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = write_listings(tmp_path / "in", "csv")
    out = tmp_path / "ray.jsonl"
    real_write = outputs.JsonLinesOutput.write
    written = 0

    def crash_after_five(self: outputs.JsonLinesOutput, answer: dict[str, Any]) -> None:
        nonlocal written
        if written == 5:
            raise Crash
        written += 1
        real_write(self, answer)

    monkeypatch.setattr(outputs.JsonLinesOutput, "write", crash_after_five)
    with pytest.raises(Crash):
        run("scan-batch", str(manifest), "--out", str(out), "--engine", "ray", "--actors", "2", data_dir=catalog)
    monkeypatch.setattr(outputs.JsonLinesOutput, "write", real_write)
    first = answers(out)
    assert len(first) == 5
    with open(out, "a") as fh:
        fh.write(json.dumps(by_listing(first)[first[-1]["listing_id"]])[:30])  # a crash mid-line: a torn last line

    result = run("scan-batch", str(manifest), "--out", str(out), "--engine", "ray", "--actors", "2", data_dir=catalog)
    assert result.exit_code == 0, result.output  # the crashed run's actors are gone: two fit again
    summary = json.loads(result.stdout)
    assert (summary["skipped"], summary["scanned"] + summary["errors"]) == (5, len(LISTING_IDS) - 5)
    assert "cut short" in result.stderr
    assert answers(out)[:5] == first  # untouched
    assert sorted(by_listing(answers(out))) == sorted(LISTING_IDS)  # none lost, none twice


def test_actors_fit_the_cpus_of_a_private_ray() -> None:
    """A fixed pool larger than a Ray this command started would wait for ever: refused; by default one CPU is left."""
    from service.bulk.ray_engine import RayOptions, RayRuntime, RayScanError, actor_count

    private = RayRuntime(started_here=True, start_seconds=0.0, cpus=2.0, gpus=0.0)
    with pytest.raises(RayScanError, match="lower --actors"):
        actor_count(RayOptions(None, 3, 1.0, 0.0), private)
    with pytest.raises(RayScanError, match="GPUs"):
        actor_count(RayOptions(None, 1, 1.0, 1.0), private)
    assert actor_count(RayOptions(None, 0, 1.0, 0.0), private) == 1
    assert actor_count(RayOptions(None, 2, 1.0, 0.0), private) == 2
    assert actor_count(RayOptions(None, 0, 2.0, 0.0), RayRuntime(True, 0.0, 16.0, 0.0)) == 7


# --- the read-only core the actors open ---------------------------------------------------------------------------
def files(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def test_a_read_only_core_on_a_snapshot_writes_nothing_and_scans_like_the_full_one(catalog: Path) -> None:
    settings = tiny_settings(catalog)
    full = ServiceCore.open(settings)
    try:
        snapshot = full.index_keeper.publish_snapshot()
        assert full.index_keeper.publish_snapshot() == snapshot  # the same revision: reused
        photos = [PhotoInput(imaging.jpeg(2)), PhotoInput(imaging.jpeg(7))]
        expected = full.pipeline.scan(photos, "Acme", record=False).plain()
    finally:
        full.close()
    before = files(catalog)

    reader = ServiceCore.open_snapshot(settings, snapshot)
    try:
        assert reader.read_only and len(reader.model.index) == 4 and len(reader.index_keeper.refs) == 4
        assert len(reader.index_keeper.near_duplicates) == 4
        got = reader.pipeline.scan(photos, "Acme", record=False).plain()
    finally:
        reader.close()
    assert_same_answers(expected, got)
    assert files(catalog) == before  # no folder made, no index saved, no migration, no blob touched

    settings_elsewhere = tiny_settings(catalog.parent / "nothing-here")
    with pytest.raises(ReadOnlyCoreError, match="no catalog database"):
        ServiceCore.open_snapshot(settings_elsewhere, snapshot)
    assert not (catalog.parent / "nothing-here").exists()


def test_a_read_only_core_refuses_a_database_behind_the_schema_or_another_models_snapshot(catalog: Path) -> None:
    settings = tiny_settings(catalog)
    full = ServiceCore.open(settings)
    try:
        snapshot = full.index_keeper.publish_snapshot()
    finally:
        full.close()
    older = next(script.revision for script in _scripts().walk_revisions() if script.revision != head_revision())
    database = catalog / "catalog.sqlite3"
    with sqlite3.connect(database) as db:
        db.execute("update alembic_version set version_num = ?", (older,))
    with pytest.raises(ReadOnlyCoreError, match="db upgrade"):
        ServiceCore.open_snapshot(settings, snapshot)
    with sqlite3.connect(database) as db:
        assert db.execute("select version_num from alembic_version").fetchone()[0] == older  # not migrated
        db.execute("update alembic_version set version_num = ?", (head_revision(),))

    manifest = json.loads((snapshot / "snapshot.json").read_text())
    (snapshot / "snapshot.json").write_text(json.dumps({**manifest, "format": 99}))
    with pytest.raises(SnapshotError, match="format 99"):
        ServiceCore.open_snapshot(settings, snapshot)
