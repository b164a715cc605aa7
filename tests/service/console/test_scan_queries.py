"""Scan record queries behind the console's review queue and dashboard: brand scoping, filters, back-fill."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from reference_catalog import create_catalog_engine
from service.config import Settings
from service.db.migrate import upgrade, upgrade_if_behind
from service.scanning.feedback import FeedbackStore
from service.scanning.records import ScanRecordStore, concerned_brands, scan_subjects
from service.scanning.result import NearDuplicateOut, ScanResult
from tests.helpers import STORED_MODEL
from tests.service.db.release import back_to_release


def result(number: int, brand: str, verdict: str, risk: float | None, product: str = "runner", **extra: Any) -> ScanResult:
    match = {"image_id": f"ref_{number}", "brand": brand, "product": product, "label": "authentic", "similarity": 0.9}
    figures = dict.fromkeys(("risk", "score", "nearest_authentic", "nearest_counterfeit", "margin"), None)
    image = {"sha256": f"{number:064x}", **figures, "in_catalog": True, "matches": [match], "near_duplicates": []}
    return ScanResult.model_validate({
        "scan_id": f"scan_{number:03d}", "listing_id": None, "created_at": "2026-12-05T00:00:00+00:00", "verdict": verdict,
        "risk": risk, "score": risk, "calibrated": False, "calibration": None, "features": {}, "brand": None, "product": None,
        "model": STORED_MODEL, "index_version": "v1", "images": [image], "reasons": [], "photos_kept": False, **extra,
    })  # fmt: skip


def migrated(where: Path | Settings) -> Engine:
    """A database at the schema's head, as a starting service leaves it: a SQLite file, or the settings' database."""
    if isinstance(where, Settings):
        where.storage.data_dir.mkdir(parents=True, exist_ok=True)  # where the SQLite file goes
    engine = create_catalog_engine(f"sqlite:///{where}" if isinstance(where, Path) else where.resolved_database_url)
    upgrade_if_behind(engine)
    return engine


def test_subjects_are_the_pairs_behind_concerned_brands() -> None:
    scan = result(1, "Acme", "needs_review", 0.5).model_copy(update={"brand": "Zed"})
    other = {"image_id": "ref_9", "brand": "Other", "product": "bag", "label": "counterfeit", "distance": 3}
    scan.images[0].near_duplicates = [NearDuplicateOut.model_validate(other)]
    assert scan_subjects(scan) == [("Acme", "runner"), ("Other", "bag"), ("Zed", "")]
    assert sorted({b for b, _ in scan_subjects(scan)}) == concerned_brands(scan)


@pytest.mark.both_databases
def test_query_filters_scope_and_order(settings: Settings) -> None:
    store = ScanRecordStore(migrated(settings))
    now = datetime.now(UTC)
    verdicts = ["needs_review", "likely_counterfeit", "likely_authentic"]
    for n in range(12):
        brand = "Acme" if n % 2 else "Bolt"
        store.save(result(n, brand, verdicts[n % 3], n / 12, product="boot" if n % 4 == 1 else "runner"),
                   now - timedelta(hours=n), "fp", "key_x")  # fmt: skip
    flagged = ["needs_review", "likely_counterfeit"]
    rows, total = store.query(verdicts=flagged, brands={"Acme"})
    assert total == len(rows) == 4 and all(r.images[0].matches[0].brand == "Acme" for r in rows)
    assert [r.scan_id for r in rows] == ["scan_001", "scan_003", "scan_007", "scan_009"]  # newest first
    assert store.query(verdicts=flagged, brands=set())[1] == 0
    assert store.query(verdicts=flagged, brands=None)[1] == 8
    assert {r.scan_id for r in store.query(brands={"Acme"}, product="boot")[0]} == {"scan_001", "scan_005", "scan_009"}
    assert {r.scan_id for r in store.query(brands={"Bolt"}, product="boot")[0]} == set()
    assert [r.scan_id for r in store.query(min_risk=0.75)[0]] == ["scan_009", "scan_010", "scan_011"]
    page, total = store.query(limit=5, offset=10)
    assert total == 12 and [r.scan_id for r in page] == ["scan_010", "scan_011"]
    counts = store.daily_counts(now - timedelta(days=2), {"Acme"})
    assert sum(n for _, _, n in counts) == 6 and {v for _, v, _ in counts} == set(verdicts)


def test_subjects_of_older_records_are_back_filled(tmp_path: Path) -> None:
    engine = migrated(tmp_path / "db.sqlite3")
    store = ScanRecordStore(engine)
    for n in range(3):
        store.save(result(n, "Acme", "needs_review", 0.5), datetime.now(UTC), "fp")
    back_to_release(engine)
    with engine.begin() as conn:  # as in a database from before the table (and before migrations) existed
        conn.execute(text("DROP TABLE scan_subjects"))
        conn.execute(text("DROP TABLE alembic_version"))
    upgrade_if_behind(engine)  # the migration that creates the table fills it
    reopened = ScanRecordStore(engine)
    assert reopened.query(brands={"Acme"})[1] == 3
    upgrade(engine)  # only the first upgrade fills it
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM scan_subjects")).scalar() == 3


@pytest.mark.both_databases
def test_query_by_review_state(settings: Settings) -> None:
    engine = migrated(settings)  # with the audit log, which feedback writes to
    store, feedback = ScanRecordStore(engine), FeedbackStore(engine)
    for n in range(4):
        store.save(result(n, "Acme", "needs_review", 0.5), datetime.now(UTC) - timedelta(minutes=n), "fp")
    feedback.add("scan_001", "confirmed_authentic", None, [], None)
    feedback.add("scan_001", "confirmed_counterfeit", None, [], None)  # reviewed twice: still one scan
    feedback.add("scan_003", "not_applicable", None, [], None)
    assert [r.scan_id for r in store.query(reviewed=True)[0]] == ["scan_001", "scan_003"]
    assert [r.scan_id for r in store.query(reviewed=False)[0]] == ["scan_000", "scan_002"]
    assert store.query(reviewed=None)[1] == 4
