"""Catalog import jobs in the catalog database, so that a restarted service carries on with them."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import JSON, Engine, Integer, String, select
from sqlalchemy.orm import Mapped, mapped_column, sessionmaker

from reference_catalog.database import Base

JobState = Literal["queued", "running", "succeeded", "failed"]
UNFINISHED: tuple[str, ...] = ("queued", "running")
MAX_REPORTED_ERRORS = 1000  # beyond it only `error_count` grows


class ImportJobRow(Base):
    __tablename__ = "catalog_import_jobs"
    job_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    state: Mapped[str] = mapped_column(String(20), index=True)
    created_by: Mapped[str] = mapped_column(String(80), index=True)
    role: Mapped[str] = mapped_column(String(20))
    brands: Mapped[list[str]] = mapped_column(JSON)  # the key's brands when it submitted (brand keys)
    filename: Mapped[str | None] = mapped_column(String(500))
    archive_format: Mapped[str] = mapped_column(String(10))
    archive_bytes: Mapped[int] = mapped_column(Integer)
    split: Mapped[str | None] = mapped_column(String(200))
    layout: Mapped[str | None] = mapped_column(String(20), default=None)
    created_at: Mapped[datetime] = mapped_column(index=True)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    rows_total: Mapped[int | None] = mapped_column(Integer, default=None)  # known once the archive is checked
    rows_done: Mapped[int] = mapped_column(Integer, default=0)
    position: Mapped[int] = mapped_column(Integer, default=0)  # importable rows processed: where a restart resumes
    images_added: Mapped[int] = mapped_column(Integer, default=0)
    duplicates_skipped: Mapped[int] = mapped_column(Integer, default=0)
    error_count: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    failure: Mapped[str | None] = mapped_column(String(2000), default=None)
    # Which process runs the job, until when: a replica claims an unfinished job only when no live lease holds it.
    claimed_by: Mapped[str | None] = mapped_column(String(120), default=None)
    lease_until: Mapped[datetime | None] = mapped_column(default=None)


@dataclass(frozen=True)
class Progress:
    """One step of a running job, written in one transaction."""

    rows: int
    position: int
    added: int
    duplicates: int
    errors: list[dict[str, Any]]


def new_job_id() -> str:
    return "imp_" + secrets.token_hex(12)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def job_view(row: ImportJobRow) -> dict[str, Any]:
    """The public view of a job (what GET /v1/catalog/imports/{job_id} answers)."""
    return {
        "job_id": row.job_id,
        "state": row.state,
        "filename": row.filename,
        "format": row.archive_format,
        "archive_bytes": row.archive_bytes,
        "split": row.split,
        "layout": row.layout,
        "created_by": row.created_by,
        "created_at": _iso(row.created_at),
        "started_at": _iso(row.started_at),
        "finished_at": _iso(row.finished_at),
        "rows_total": row.rows_total,
        "rows_done": row.rows_done,
        "images_added": row.images_added,
        "duplicates_skipped": row.duplicates_skipped,
        "error_count": row.error_count,
        "errors": list(row.errors),
        "failure": row.failure,
    }


class ImportJobStore:
    def __init__(self, engine: Engine) -> None:
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def create(self, row: ImportJobRow) -> ImportJobRow:
        with self._sessions.begin() as session:
            session.add(row)
        return row

    def get(self, job_id: str) -> ImportJobRow | None:
        with self._sessions() as session:
            return session.get(ImportJobRow, job_id)

    def recent(self, created_by: str | None = None, limit: int = 50) -> list[ImportJobRow]:
        """Newest first; all jobs, or those one key submitted."""
        query = select(ImportJobRow).order_by(ImportJobRow.created_at.desc(), ImportJobRow.job_id).limit(limit)
        if created_by is not None:
            query = query.where(ImportJobRow.created_by == created_by)
        with self._sessions() as session:
            return list(session.scalars(query))

    def unfinished(self) -> list[str]:
        """Ids of queued and running jobs, oldest first (running ones were interrupted by a stop)."""
        query = select(ImportJobRow.job_id).where(ImportJobRow.state.in_(UNFINISHED)).order_by(ImportJobRow.created_at)
        with self._sessions() as session:
            return list(session.scalars(query))

    def start(self, job_id: str) -> ImportJobRow:
        with self._sessions.begin() as session:
            row = session.get_one(ImportJobRow, job_id)
            row.state = "running"
            row.started_at = row.started_at or datetime.now(UTC)
            return row

    def planned(self, job_id: str, layout: str, rows_total: int, errors: list[dict[str, Any]]) -> ImportJobRow:
        """The archive passed its checks: how many rows it has, and the rows already refused while reading it."""
        with self._sessions.begin() as session:
            row = session.get_one(ImportJobRow, job_id)
            row.layout = layout
            row.rows_total = rows_total
            row.rows_done = len(errors)
            row.error_count = len(errors)
            row.errors = errors[:MAX_REPORTED_ERRORS]
            return row

    def advance(self, job_id: str, step: Progress) -> ImportJobRow:
        with self._sessions.begin() as session:
            row = session.get_one(ImportJobRow, job_id)
            row.rows_done += step.rows
            row.position = step.position
            row.images_added += step.added
            row.duplicates_skipped += step.duplicates
            row.error_count += len(step.errors)
            room = MAX_REPORTED_ERRORS - len(row.errors)
            if step.errors and room > 0:
                row.errors = [*row.errors, *step.errors[:room]]
            return row

    def finish(self, job_id: str, state: JobState, failure: str | None = None) -> ImportJobRow:
        with self._sessions.begin() as session:
            row = session.get_one(ImportJobRow, job_id)
            row.state = state
            row.failure = failure[:2000] if failure else None
            row.finished_at = datetime.now(UTC)
            return row
