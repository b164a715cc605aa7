"""The data directory made by the release of 2026-12-05 (tests/fixtures), copied for a test, and what it holds."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine

from service.db.migrate import alembic_config
from service.db.schema import metadata
from tests.helpers import REPO_ROOT

RELEASE_DIR = REPO_ROOT / "tests" / "fixtures" / "release-2026-12-05"
RELEASE_REVISION = "0001_release_2026_12_05"  # the migration that adopts the release's schema as it was
# The tables of a database that release made (its sqlite_sequence aside), in the order it created them.
RELEASE_TABLES = [
    "brands", "catalog_state", "audit_log", "products", "reference_images", "image_embeddings", "image_details",
    "image_groups", "image_hashes", "scan_records", "api_keys", "catalog_import_jobs", "scan_access", "scan_feedback",
    "scan_feedback_brands", "scan_subjects", "scan_brand_views", "console_sessions",
]  # fmt: skip


def copy_release(target: Path) -> tuple[Path, dict[str, Any]]:
    """A copy of the release's data directory at `target` (the fixture itself is never opened), and its release.json."""
    shutil.copytree(RELEASE_DIR, target)
    info: dict[str, Any] = json.loads((target / "release.json").read_text())
    return target / "catalog.sqlite3", info


def tables(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY rowid")]


def row_counts(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as db:
        return {name: db.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0] for name in tables(path)}


def schema_sql(path: Path) -> dict[str, str]:
    """Each table's, index's and trigger's CREATE statement, by name (SQLite's own automatic indexes aside)."""
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%'")
        return dict(rows.fetchall())


def differences(engine: Engine) -> list[Any]:
    """What Alembic's autogenerate finds between the database and the tables the code declares (nothing, at head)."""
    with engine.connect() as connection:
        return list(compare_metadata(MigrationContext.configure(connection), metadata))


def back_to_release(engine: Engine) -> None:
    """Migrate a database at the head down to the release's schema (what the later revisions added, removed), so
    that a test can then make it look older still, or as the release left it (no alembic_version)."""
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), RELEASE_REVISION)
