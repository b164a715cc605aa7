"""Upgrading databases made before migrations (the release of 2026-12-05, and an older one), and two upgraders at once."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from click.testing import CliRunner

from cli.main import cli
from reference_catalog import create_catalog_engine
from service.db.migrate import current_revision, head_revision, upgrade
from tests.helpers import REPO_ROOT
from tests.service.db.release import RELEASE_TABLES, copy_release, differences, row_counts, schema_sql, tables


def test_db_upgrade_on_the_release_keeps_every_row(tmp_path: Path) -> None:
    path, _ = copy_release(tmp_path / "data")
    before, release_tables, release_sql = row_counts(path), tables(path), schema_sql(path)
    assert set(before) == {*RELEASE_TABLES, "sqlite_sequence"} and all(before.values())  # every table holds rows
    result = CliRunner().invoke(cli, ["db", "upgrade", "--data-dir", str(tmp_path / "data")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"from_revision": None, "to_revision": head_revision(), "upgraded": True}
    # Every row kept; revision 0003 adds the (empty) change feed, its start in catalog_state and two job columns.
    assert row_counts(path) == {
        **before,
        "alembic_version": 1,
        "catalog_changes": 0,
        "catalog_state": before["catalog_state"] + 1,
    }
    assert sorted(tables(path)) == sorted([*release_tables, "alembic_version", "catalog_changes"])
    after = schema_sql(path)
    assert after.pop("catalog_import_jobs").endswith("claimed_by VARCHAR(120), lease_until DATETIME, \n\tPRIMARY KEY (job_id)\n)")
    release_sql.pop("catalog_import_jobs")
    new = {"alembic_version", "catalog_changes", "ix_catalog_changes_revision"}
    assert {name: sql for name, sql in after.items() if name not in new} == release_sql  # the rest unchanged
    engine = create_catalog_engine(f"sqlite:///{path}")
    assert current_revision(engine) == head_revision() and differences(engine) == []


def test_an_older_database_gets_the_newer_tables_and_its_scans_subjects(tmp_path: Path) -> None:
    """Before scan_subjects, scan_brand_views, scan_feedback_brands, image_details and image_groups: the migration
    creates them, fills scan_subjects from the scan records (as the release did at start) and leaves the rest empty."""
    path, info = copy_release(tmp_path / "data")
    newer = ["scan_subjects", "scan_brand_views", "scan_feedback_brands", "image_details", "image_groups"]
    with sqlite3.connect(path) as db:
        subjects = sorted(db.execute("SELECT scan_id, brand, product FROM scan_subjects").fetchall())
        for name in newer:
            db.execute(f"DROP TABLE {name}")
        db.execute("DROP INDEX ix_scan_records_verdict")  # and an index it would have had
    before = row_counts(path)
    engine = create_catalog_engine(f"sqlite:///{path}")
    assert current_revision(engine) is None
    result = CliRunner().invoke(cli, ["db", "upgrade", "--data-dir", str(path.parent)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    after = row_counts(path)
    assert {name: after[name] for name in before} == {**before, "catalog_state": before["catalog_state"] + 1}  # + changes_from
    assert {name: after[name] for name in newer} == {**dict.fromkeys(newer, 0), "scan_subjects": len(subjects)}
    with sqlite3.connect(path) as db:
        assert sorted(db.execute("SELECT scan_id, brand, product FROM scan_subjects").fetchall()) == subjects
    assert {scan_id for scan_id, _, _ in subjects} == set(info["scan_ids"])
    assert differences(engine) == []


UPGRADER = """
import sys, time
from pathlib import Path
from reference_catalog import create_catalog_engine
from service.db.migrate import upgrade
ready, go = Path(sys.argv[2]), Path(sys.argv[3])
engine = create_catalog_engine("sqlite:///" + sys.argv[1])
ready.touch()
while not go.exists():
    time.sleep(0.005)
print(upgrade(engine)[0])
"""


def test_two_processes_upgrading_one_new_database_at_once(tmp_path: Path) -> None:
    """A service and a CLI command starting together: one migrates, the other waits for it and finds the head."""
    path, go = tmp_path / "catalog.sqlite3", tmp_path / "go"
    ready = [tmp_path / f"ready{n}" for n in range(2)]
    processes = [
        subprocess.Popen([sys.executable, "-c", UPGRADER, str(path), str(flag), str(go)], cwd=REPO_ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for flag in ready
    ]  # fmt: skip
    deadline = time.monotonic() + 120
    while not all(flag.exists() for flag in ready) and time.monotonic() < deadline:  # both imported, engines made
        time.sleep(0.01)
    go.touch()
    outputs = [process.communicate(timeout=120) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    assert sorted(stdout.strip() for stdout, _ in outputs) == sorted(["None", head_revision()])  # one migrated
    engine = create_catalog_engine(f"sqlite:///{path}")
    assert current_revision(engine) == head_revision() and differences(engine) == []


def test_two_replicas_upgrading_one_new_postgres_database_at_once(postgres_url: str) -> None:
    """The same on PostgreSQL, where the migrations take an advisory lock: a server-side lock, so two threads with
    their own connections race exactly as two replicas would."""
    engines = [create_catalog_engine(postgres_url) for _ in range(2)]
    start, results = threading.Barrier(2), dict[int, str | None]()

    def upgrader(n: int) -> None:
        start.wait()
        results[n] = upgrade(engines[n])[0]

    threads = [threading.Thread(target=upgrader, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(results.values(), key=str) == sorted([None, head_revision()], key=str)  # one migrated
    assert current_revision(engines[0]) == head_revision() and differences(engines[0]) == []
    for engine in engines:
        engine.dispose()
