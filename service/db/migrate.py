"""Bring a database to the schema this release declares: Alembic migrations, configured here rather than in an .ini.

The service and every CLI command that opens the database call `upgrade_if_behind` first, so a database made by an
older release is migrated at start; `counterfeit-scan db upgrade` does the same by hand (before rolling out replicas).
Several processes may start on one database at once (a service and a CLI command): each upgrade takes the database's
write lock before it reads the current revision, so one migrates and the others then find it at the head.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)
T = TypeVar("T")

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# How long a starting process waits for another one's migration to finish (a long back-fill on a large database).
SQLITE_LOCK_WAIT_S = 600
POSTGRES_LOCK_KEY = 0x63735F6462  # pg_advisory_xact_lock key of the migrations ("cs_db")


class UnknownRevision(RuntimeError):
    """The database was migrated by a newer release than this one: running would misread its tables."""


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration without a file: where the migrations are, and the connection they are to run on."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The revision this release's schema is at."""
    head = _scripts().get_current_head()
    assert head is not None, "the migrations directory holds no revision"
    return head


def _revision_of(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def current_revision(engine: Engine) -> str | None:
    """The database's revision; None for an empty database or one made before migrations (no alembic_version)."""
    with engine.connect() as connection:
        return _revision_of(connection)


def _check_known(revision: str | None) -> None:
    if revision is not None and revision not in {script.revision for script in _scripts().walk_revisions()}:
        raise UnknownRevision(
            f"the database is at schema revision {revision!r}, which this release does not know (its newest is "
            f"{head_revision()!r}): it was migrated by a newer release; run that release"
        )


def is_behind(engine: Engine) -> bool:
    """Whether the database needs `upgrade` (raises UnknownRevision for a database of a newer release)."""
    revision = current_revision(engine)
    _check_known(revision)
    return revision != head_revision()


@contextmanager
def _locked(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that holds the database's migration lock until it commits (or rolls back).

    SQLite: a connection of its own whose transaction starts with BEGIN IMMEDIATE (the write lock; SQLite's DDL is
    transactional, so a crash leaves no half-made schema); the driver's own transaction handling is switched off so
    that it neither delays the BEGIN nor commits in between. PostgreSQL: a transaction-scoped advisory lock."""
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        locker = create_engine(engine.url, poolclass=NullPool, connect_args={"timeout": SQLITE_LOCK_WAIT_S})

        @event.listens_for(locker, "connect")
        def _manual_transactions(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None
            dbapi_connection.execute("PRAGMA journal_mode=WAL")  # as the service's own connections (before the lock)

        @event.listens_for(locker, "begin")
        def _write_lock(connection: Connection) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        try:
            with locker.begin() as connection:
                yield connection
        finally:
            locker.dispose()
        return
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": POSTGRES_LOCK_KEY})
        yield connection


def _retrying_when_locked(engine: Engine, work: Callable[[], T]) -> T:
    """`work()`, tried again while SQLite answers "database is locked" without waiting for its busy timeout (it
    does so when another process is switching a new file to WAL or recovering its WAL); the work is one transaction,
    rolled back whole when it fails, so trying again is safe."""
    deadline = time.monotonic() + SQLITE_LOCK_WAIT_S
    while True:
        try:
            return work()
        except OperationalError as exc:
            if engine.dialect.name != "sqlite" or "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            log.info("database busy (%s); trying again", exc.orig)
            time.sleep(0.05)


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Migrate the database to the head under the migration lock; (revision before, revision after)."""
    return _retrying_when_locked(engine, lambda: _upgrade(engine))


def _upgrade(engine: Engine) -> tuple[str | None, str]:
    with _locked(engine) as connection:
        before = _revision_of(connection)
        _check_known(before)
        head = head_revision()
        if before != head:
            command.upgrade(alembic_config(connection), "head")
    if before != head:
        log.info("database schema upgraded from %s to %s", before or "(none)", head)
    return before, head


def upgrade_if_behind(engine: Engine) -> None:
    """What a starting process calls: upgrade a database that is behind (re-checked under the lock), else nothing."""
    if _retrying_when_locked(engine, lambda: is_behind(engine)):
        upgrade(engine)
