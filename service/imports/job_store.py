"""Catalog import jobs in the catalog database, so that a restarted service carries on with them."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import JSON, ColumnElement, Engine, Integer, String, or_, select, text, update
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from reference_catalog.database import Base

JobState = Literal["queued", "running", "succeeded", "failed"]
UNFINISHED: tuple[str, ...] = ("queued", "running")
MAX_REPORTED_ERRORS = 1000  # beyond it only `error_count` grows
CLAIM_CANDIDATES = 8  # unfinished jobs a claim tries, oldest first, when others take the first ones at the same moment


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


class LeaseLost(RuntimeError):
    """This process no longer holds the job's claim: another replica took it over (or it finished). Write nothing."""


def _now(session: Session) -> datetime:
    """The clock leases are read and written by: the database server's on PostgreSQL, so that replicas on several
    machines agree whatever their own clocks say; this machine's on SQLite (whose writers share one machine)."""
    if session.get_bind().dialect.name == "postgresql":
        value = session.scalar(text("SELECT clock_timestamp()"))
        if isinstance(value, datetime):
            return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return datetime.now(UTC)


def _lease_free(owner: str, now: datetime) -> ColumnElement[bool]:
    """The job may be claimed by `owner`: nobody holds it, its holder's lease ran out, or `owner` holds it already."""
    return or_(
        ImportJobRow.claimed_by.is_(None),
        ImportJobRow.claimed_by == owner,
        ImportJobRow.lease_until.is_(None),
        ImportJobRow.lease_until < now,
    )


class ImportJobStore:
    """The jobs' rows. A job runs in the one process that claims it (`claim`): a lease (`claimed_by`, `lease_until`)
    that its worker renews at every checkpoint and from a heartbeat; once the lease runs out, another replica on the
    same database may claim the job and resume it from its last checkpoint. Every progress write (`start`,
    `planned`, `advance`, `finish`) applies only while the writer holds the claim, and renews it; otherwise it raises
    `LeaseLost` and writes nothing. Each claim or write is one conditional UPDATE, checked by its row count, so it is
    atomic on SQLite (one writer at a time) and on PostgreSQL (the row's lock, its condition evaluated again after a
    concurrent update)."""

    def __init__(self, engine: Engine) -> None:
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def create(self, row: ImportJobRow) -> ImportJobRow:
        with self._sessions.begin() as session:
            session.add(row)
        return row

    def get(self, job_id: str) -> ImportJobRow | None:
        with self._sessions() as session:
            return session.get(ImportJobRow, job_id)

    def states(self, job_ids: Iterable[str]) -> dict[str, tuple[str, str | None]]:
        """(state, claimed_by) of those of `job_ids` that have a row."""
        wanted = sorted(set(job_ids))
        if not wanted:
            return {}
        query = select(ImportJobRow.job_id, ImportJobRow.state, ImportJobRow.claimed_by).where(ImportJobRow.job_id.in_(wanted))
        with self._sessions() as session:
            return {job_id: (state, claimed_by) for job_id, state, claimed_by in session.execute(query)}

    def recent(self, created_by: str | None = None, limit: int = 50) -> list[ImportJobRow]:
        """Newest first; all jobs, or those one key submitted."""
        query = select(ImportJobRow).order_by(ImportJobRow.created_at.desc(), ImportJobRow.job_id).limit(limit)
        if created_by is not None:
            query = query.where(ImportJobRow.created_by == created_by)
        with self._sessions() as session:
            return list(session.scalars(query))

    def unfinished(self) -> list[str]:
        """Ids of queued and running jobs, oldest first (running ones were interrupted by a stop, or run elsewhere)."""
        query = (
            select(ImportJobRow.job_id)
            .where(ImportJobRow.state.in_(UNFINISHED))
            .order_by(ImportJobRow.created_at, ImportJobRow.job_id)
        )
        with self._sessions() as session:
            return list(session.scalars(query))

    # --- claims -------------------------------------------------------------------------------------------------
    def claim(self, owner: str, lease_s: float) -> str | None:
        """Claim the oldest unfinished job that no live lease holds (or that `owner` holds already) for `lease_s`
        seconds; its id, or None when there is none. Two processes never both get one job."""
        with self._sessions() as session:
            now = _now(session)
            free = _lease_free(owner, now)
            candidates = list(
                session.scalars(
                    select(ImportJobRow.job_id)
                    .where(ImportJobRow.state.in_(UNFINISHED), free)
                    .order_by(ImportJobRow.created_at, ImportJobRow.job_id)
                    .limit(CLAIM_CANDIDATES)
                )
            )
            session.rollback()  # no read snapshot held across the updates (SQLite would refuse to upgrade it)
            for job_id in candidates:  # another process may take each one first: the update's condition decides
                with session.begin():
                    claimed = session.connection().execute(
                        update(ImportJobRow)
                        .where(ImportJobRow.job_id == job_id, ImportJobRow.state.in_(UNFINISHED), free)
                        .values(claimed_by=owner, lease_until=now + timedelta(seconds=lease_s))
                    )
                if claimed.rowcount == 1:
                    return job_id
        return None

    def renew(self, job_id: str, owner: str, lease_s: float) -> bool:
        """Extend `owner`'s lease on the job; False when `owner` no longer holds it (taken over, or finished)."""
        with self._sessions.begin() as session:
            return self._hold(session, job_id, owner, lease_s)

    def release(self, job_id: str, owner: str) -> bool:
        """Give an unfinished job up: another process (or this one) may claim it at once. False: `owner` held none."""
        with self._sessions.begin() as session:
            released = session.connection().execute(
                update(ImportJobRow)
                .where(ImportJobRow.job_id == job_id, ImportJobRow.claimed_by == owner, ImportJobRow.state.in_(UNFINISHED))
                .values(claimed_by=None, lease_until=None)
            )
            return released.rowcount == 1

    def _hold(self, session: Session, job_id: str, owner: str, lease_s: float | None) -> bool:
        """In `session`'s transaction: whether `owner` holds the unfinished job, renewing its lease for `lease_s`
        (None: ending it). The update takes the row's write lock, so no other claim comes in before the commit."""
        until = None if lease_s is None else _now(session) + timedelta(seconds=lease_s)
        held = session.connection().execute(
            update(ImportJobRow)
            .where(ImportJobRow.job_id == job_id, ImportJobRow.claimed_by == owner, ImportJobRow.state.in_(UNFINISHED))
            .values(lease_until=until)
        )
        return held.rowcount == 1

    def _held_row(self, session: Session, job_id: str, owner: str, lease_s: float | None) -> ImportJobRow:
        if not self._hold(session, job_id, owner, lease_s):
            raise LeaseLost(f"import job {job_id} is no longer claimed by {owner}")
        return session.get_one(ImportJobRow, job_id, populate_existing=True)

    # --- progress, by the claim's holder ---------------------------------------------------------------------------
    def start(self, job_id: str, owner: str, lease_s: float) -> ImportJobRow:
        with self._sessions.begin() as session:
            row = self._held_row(session, job_id, owner, lease_s)
            row.state = "running"
            row.started_at = row.started_at or datetime.now(UTC)
            return row

    def planned(
        self, job_id: str, owner: str, lease_s: float, layout: str, rows_total: int, errors: list[dict[str, Any]]
    ) -> ImportJobRow:
        """The archive passed its checks: how many rows it has, and the rows already refused while reading it."""
        with self._sessions.begin() as session:
            row = self._held_row(session, job_id, owner, lease_s)
            row.layout = layout
            row.rows_total = rows_total
            row.rows_done = len(errors)
            row.error_count = len(errors)
            row.errors = errors[:MAX_REPORTED_ERRORS]
            return row

    def advance(self, job_id: str, owner: str, lease_s: float, step: Progress) -> ImportJobRow:
        """A checkpoint: the chunk's counts and the position a takeover or restart resumes at."""
        with self._sessions.begin() as session:
            row = self._held_row(session, job_id, owner, lease_s)
            row.rows_done += step.rows
            row.position = step.position
            row.images_added += step.added
            row.duplicates_skipped += step.duplicates
            row.error_count += len(step.errors)
            room = MAX_REPORTED_ERRORS - len(row.errors)
            if step.errors and room > 0:
                row.errors = [*row.errors, *step.errors[:room]]
            return row

    def finish(self, job_id: str, owner: str, state: JobState, failure: str | None = None) -> ImportJobRow:
        """The job's end; its lease ends with it (`claimed_by` stays: who finished it)."""
        with self._sessions.begin() as session:
            row = self._held_row(session, job_id, owner, None)
            row.state = state
            row.failure = failure[:2000] if failure else None
            row.finished_at = datetime.now(UTC)
            return row
