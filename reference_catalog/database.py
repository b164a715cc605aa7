"""The catalog database: the one declarative base of its tables, the one UTC datetime column type, and the engine.

Every table of the catalog database (the catalog's, and the service's scan records, keys, jobs and sessions) derives
from `Base`, so that one MetaData describes the schema that the migrations (service/db/migrations) own.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Dialect, Engine, TypeDecorator, create_engine, event
from sqlalchemy.orm import DeclarativeBase


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """An instant, stored as naive UTC (SQLite keeps no zone) and read back aware, in UTC. A naive value written or
    compared is taken as UTC, an aware one as the instant it names, so that no caller fixes up zones."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None or value.tzinfo is None:
            return value
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """The one declarative base of the catalog database; a `Mapped[datetime]` column is a UtcDateTime."""

    type_annotation_map = {datetime: UtcDateTime}  # noqa: RUF012 (SQLAlchemy reads it as declared)


def create_catalog_engine(url: str) -> Engine:
    """Create an engine for `url`; SQLite connections get WAL journaling, foreign keys and a busy timeout."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    engine = create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "postgresql":
        event.listen(engine, "before_cursor_execute", _nul_matches_nothing, retval=True)
    return engine


NUL_STANDIN = "\uffff"  # a Unicode noncharacter: no stored name holds one


def _nul_matches_nothing(
    _conn: Any, _cursor: Any, statement: str, parameters: Any, context: Any, _executemany: bool
) -> tuple[str, Any]:
    """PostgreSQL's text cannot hold NUL (the driver refuses to send one), and no stored text holds one (names refuse
    control characters): a NUL in a lookup, an id or a filter from a request (`GET /v1/scans/s%00`), matches nothing,
    as on SQLite, instead of failing the request. Inserts keep theirs, and fail, should one ever get past validation."""
    if context is not None and getattr(context, "isinsert", False):
        return statement, parameters
    return statement, _without_nul(parameters)


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", NUL_STANDIN) if "\x00" in value else value
    if isinstance(value, dict):
        return {key: _without_nul(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_without_nul(item) for item in value)
    return value
