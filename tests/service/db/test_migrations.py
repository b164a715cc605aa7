"""The migrations on an empty database: they build exactly the schema the code declares and the release had."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic import command
from click.testing import CliRunner
from sqlalchemy import DateTime, text
from sqlalchemy.exc import IntegrityError

from cli.main import cli
from reference_catalog import AuditEvent, AuditLog, create_catalog_engine
from reference_catalog.database import Base, UtcDateTime
from service.config import Settings
from service.db.migrate import (
    UnknownRevision,
    alembic_config,
    current_revision,
    head_revision,
    is_behind,
    upgrade,
    upgrade_if_behind,
)
from service.db.schema import metadata
from tests.service.db.release import RELEASE_DIR, differences, schema_sql


@pytest.mark.both_databases
def test_an_empty_database_is_upgraded_to_the_declared_schema(settings: Settings) -> None:
    settings.storage.data_dir.mkdir(parents=True)
    engine = create_catalog_engine(settings.resolved_database_url)
    assert current_revision(engine) is None and is_behind(engine)
    assert upgrade(engine) == (None, head_revision())
    assert current_revision(engine) == head_revision() and not is_behind(engine)
    assert differences(engine) == []
    assert upgrade(engine) == (head_revision(), head_revision())  # again: nothing to do
    upgrade_if_behind(engine)
    assert differences(engine) == []
    engine.dispose()


def test_the_migrations_make_the_same_statements_as_the_release(tmp_path: Path) -> None:
    """Table for table, index for index, trigger for trigger, the DDL text SQLite keeps at revision 0001 is the
    release's own."""
    engine = create_catalog_engine(f"sqlite:///{tmp_path / 'catalog.sqlite3'}")
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), "0001_release_2026_12_05")
    made = schema_sql(tmp_path / "catalog.sqlite3")
    assert made.pop("alembic_version").startswith("CREATE TABLE alembic_version")
    assert made == schema_sql(RELEASE_DIR / "catalog.sqlite3")


def test_one_base_and_one_time_type_for_every_table() -> None:
    assert metadata is Base.metadata and len(metadata.tables) == 19
    times = [column for table in metadata.tables.values() for column in table.columns if isinstance(column.type, DateTime)]
    assert times == []  # a plain DateTime would hand back naive datetimes
    utc = [f"{c.table.name}.{c.name}" for t in metadata.tables.values() for c in t.columns if isinstance(c.type, UtcDateTime)]
    assert len(utc) == 15 and "audit_log.at" in utc and "console_sessions.expires_at" in utc


def test_times_are_stored_as_the_release_stored_them_and_read_back_in_utc(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite3"
    engine = create_catalog_engine(f"sqlite:///{path}")
    upgrade(engine)
    log = AuditLog(engine)
    log.record(AuditEvent("key_a", "catalog.add"))
    with sqlite3.connect(path) as db:  # the release's format: naive UTC, microseconds
        (stored,) = db.execute("SELECT at FROM audit_log").fetchone()
    at = datetime.strptime(stored, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
    assert abs(at - datetime.now(UTC)) < timedelta(minutes=1)
    [entry] = log.query()
    assert entry["at"] == at.isoformat() and entry["at"].endswith("+00:00")
    plus_two = timezone(timedelta(hours=2))
    assert len(log.query(since=at.astimezone(plus_two))) == 1  # an instant with an offset compares as that instant
    assert log.query(since=(at + timedelta(microseconds=1)).astimezone(plus_two)) == []
    assert len(log.query(since=at.replace(tzinfo=None))) == 1  # naive: UTC
    assert log.query(until=at.astimezone(plus_two)) == []


@pytest.mark.both_databases
def test_the_audit_log_stays_append_only(settings: Settings) -> None:
    engine = create_catalog_engine(settings.resolved_database_url)
    settings.storage.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(engine)
    AuditLog(engine).record(AuditEvent("key_a", "catalog.add"))
    statements = ["UPDATE audit_log SET actor = 'x'", "DELETE FROM audit_log"]
    if engine.dialect.name == "postgresql":
        statements.append("TRUNCATE audit_log")
    for statement in statements:
        with pytest.raises(IntegrityError, match="append-only"), engine.begin() as connection:
            connection.execute(text(statement))
    AuditLog(engine).record(AuditEvent("key_a", "catalog.delete"))  # appending still works
    assert [entry["action"] for entry in AuditLog(engine).query()] == ["catalog.delete", "catalog.add"]
    engine.dispose()


@pytest.mark.both_databases
def test_db_current_and_upgrade_commands(tmp_path: Path, database_url: str | None) -> None:
    data_dir, url = tmp_path / "data", ["--database-url", database_url] if database_url else []

    def run(command: str) -> dict[str, object]:
        result = CliRunner().invoke(cli, ["db", command, "--data-dir", str(data_dir), *url], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        answer: dict[str, object] = json.loads(result.stdout)
        return answer

    head = head_revision()
    assert run("current") == {"revision": None, "head": head, "behind": True}
    assert not data_dir.exists()  # asking creates nothing
    assert run("upgrade") == {"from_revision": None, "to_revision": head, "upgraded": True}
    assert run("current") == {"revision": head, "head": head, "behind": False}
    assert run("upgrade") == {"from_revision": head, "to_revision": head, "upgraded": False}


def test_a_database_of_a_newer_release_is_refused(tmp_path: Path) -> None:
    engine = create_catalog_engine(f"sqlite:///{tmp_path / 'catalog.sqlite3'}")
    upgrade(engine)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    with pytest.raises(UnknownRevision, match="9999_from_the_future"):
        upgrade_if_behind(engine)
    result = CliRunner().invoke(cli, ["db", "upgrade", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1 and "newer release" in result.output
