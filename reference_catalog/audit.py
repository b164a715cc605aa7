"""Append-only audit log in the catalog database: who (key id) did what, to what, when."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Engine, Integer, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from reference_catalog.database import Base, utcnow


class AuditEntry(Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(80), index=True)
    action: Mapped[str] = mapped_column(String(60), index=True)
    target: Mapped[str | None] = mapped_column(String(200))
    brand: Mapped[str | None] = mapped_column(String(200), index=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


# SQLite refuses to change or delete audit rows: triggers made by the migrations (service/db/migrations); PostgreSQL
# deployments grant INSERT/SELECT only on this table.


@dataclass(frozen=True)
class AuditEvent:
    actor: str
    action: str
    target: str | None = None
    brand: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def add_to(self, session: Session) -> None:
        """Write this event in the caller's transaction, so that it commits (or not) with the change it records."""
        session.add(AuditEntry(actor=self.actor, action=self.action, target=self.target, brand=self.brand,
                               details=self.details))  # fmt: skip


class AuditLog:
    def __init__(self, engine: Engine) -> None:
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def record(self, event_: AuditEvent) -> None:
        with self._sessions.begin() as session:
            event_.add_to(session)

    def query(
        self,
        actor: str | None = None,
        action: str | None = None,
        brand: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> list[dict[str, Any]]:
        """Newest first; page with `before_id` (the smallest id of the previous page).

        `since` (inclusive) and `until` (exclusive) are instants: one with a UTC offset is compared as that instant, a
        naive one is taken as UTC (`UtcDateTime` binds both so)."""
        query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
        for column, value in ((AuditEntry.actor, actor), (AuditEntry.action, action), (AuditEntry.brand, brand)):
            if value is not None:
                query = query.where(column == value)
        if since is not None:
            query = query.where(AuditEntry.at >= since)
        if until is not None:
            query = query.where(AuditEntry.at < until)
        if before_id is not None:
            query = query.where(AuditEntry.id < before_id)
        with self._sessions() as session:
            return [_as_dict(row) for row in session.scalars(query)]


def _as_dict(row: AuditEntry) -> dict[str, Any]:
    return {"id": row.id, "at": row.at.isoformat(), "actor": row.actor, "action": row.action, "target": row.target,
            "brand": row.brand, "details": row.details}  # fmt: skip
