"""Reviewer feedback on scans: recorded with the scan; confirmed fakes join the catalog as known fakes."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Engine, ForeignKey, String, select
from sqlalchemy.orm import Mapped, mapped_column, sessionmaker

from reference_catalog import AuditEvent
from service.scan_records import ScanRecordBase


class ScanFeedback(ScanRecordBase):
    __tablename__ = "scan_feedback"
    feedback_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    scan_id: Mapped[str] = mapped_column(ForeignKey("scan_records.scan_id"), index=True)
    verdict: Mapped[str] = mapped_column(String(40))
    note: Mapped[str | None] = mapped_column(String(2000))
    created_at: Mapped[datetime] = mapped_column()
    added_image_ids: Mapped[list[str]] = mapped_column(JSON)
    index_version: Mapped[str | None] = mapped_column(String(80))


class FeedbackStore:
    def __init__(self, engine: Engine) -> None:
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        ScanRecordBase.metadata.create_all(engine)

    def add(
        self, scan_id: str, verdict: str, note: str | None, added: list[str], index_version: str | None, actor: str = "system"
    ) -> dict[str, Any]:
        row = ScanFeedback(
            feedback_id="fb_" + secrets.token_urlsafe(12),
            scan_id=scan_id,
            verdict=verdict,
            note=note,
            created_at=datetime.now(UTC),
            added_image_ids=added,
            index_version=index_version,
        )
        with self._sessions.begin() as session:
            session.add(row)
            AuditEvent(actor, "feedback.create", scan_id, None,
                       {"verdict": verdict, "note": note, "added_image_ids": added}).add_to(session)  # fmt: skip
        return _as_dict(row)

    def for_scan(self, scan_id: str) -> list[dict[str, Any]]:
        with self._sessions() as session:
            rows = session.scalars(select(ScanFeedback).where(ScanFeedback.scan_id == scan_id).order_by(ScanFeedback.created_at))
            return [_as_dict(row) for row in rows]


def _as_dict(row: ScanFeedback) -> dict[str, Any]:
    created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
    return {
        "feedback_id": row.feedback_id,
        "scan_id": row.scan_id,
        "verdict": row.verdict,
        "note": row.note,
        "created_at": created.isoformat(),
        "added_image_ids": list(row.added_image_ids),
        "index_version": row.index_version,
    }
