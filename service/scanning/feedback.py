"""Reviewer feedback on scans: recorded with the scan; confirmed fakes join the catalog as known fakes.

Each feedback records the brand it was given for (`scan_feedback_brands`, its own table, so that databases made before
it existed keep working: the migrations add it). A brand's reviewers see, and count, their brands' feedback
only: several brands may review one scan that concerns them all. Feedback without a brand (an admin's on a scan that
concerns several brands, or one given before feedback recorded its brand) is shown to a brand only on scans that
concern no other brand.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, ColumnElement, Engine, ForeignKey, String, and_, or_, select
from sqlalchemy.orm import Mapped, aliased, mapped_column, sessionmaker

from reference_catalog import AuditEvent
from reference_catalog.database import Base
from service.scanning.records import ScanSubject


class ScanFeedback(Base):
    __tablename__ = "scan_feedback"
    feedback_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    scan_id: Mapped[str] = mapped_column(ForeignKey("scan_records.scan_id"), index=True)
    verdict: Mapped[str] = mapped_column(String(40))
    note: Mapped[str | None] = mapped_column(String(2000))
    created_at: Mapped[datetime] = mapped_column()
    added_image_ids: Mapped[list[str]] = mapped_column(JSON)
    index_version: Mapped[str | None] = mapped_column(String(80))


class ScanFeedbackBrand(Base):
    """The brand a feedback was given for (none: an admin's on a scan of several brands, or an older feedback)."""

    __tablename__ = "scan_feedback_brands"
    feedback_id: Mapped[str] = mapped_column(ForeignKey("scan_feedback.feedback_id"), primary_key=True)
    scan_id: Mapped[str] = mapped_column(String(40), index=True)
    brand: Mapped[str] = mapped_column(String(200), index=True)


def given_for(brands: Collection[str] | None) -> ColumnElement[bool] | None:
    """A condition on ScanFeedback: feedback that `brands`' reviewers may see (None: all feedback)."""
    if brands is None:
        return None
    names = sorted(brands)
    given = aliased(ScanFeedbackBrand)  # its own alias: the caller's query may join the table too
    attributed = select(given.feedback_id).where(given.feedback_id == ScanFeedback.feedback_id).correlate(ScanFeedback)
    other_brands = (
        select(ScanSubject.scan_id)
        .where(ScanSubject.scan_id == ScanFeedback.scan_id, ScanSubject.brand.not_in(names))
        .correlate(ScanFeedback)
    )
    return or_(attributed.where(given.brand.in_(names)).exists(), and_(~attributed.exists(), ~other_brands.exists()))


class FeedbackStore:
    def __init__(self, engine: Engine) -> None:
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def add(
        self,
        scan_id: str,
        verdict: str,
        note: str | None,
        added: list[str],
        index_version: str | None,
        actor: str = "system",
        brand: str | None = None,
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
            session.flush()  # the feedback row first: the brand row refers to it
            if brand is not None:
                session.add(ScanFeedbackBrand(feedback_id=row.feedback_id, scan_id=scan_id, brand=brand))
            AuditEvent(actor, "feedback.create", scan_id, brand,
                       {"verdict": verdict, "note": note, "added_image_ids": added}).add_to(session)  # fmt: skip
        return _as_dict(row, brand)

    def for_scan(self, scan_id: str, brands: Collection[str] | None = None) -> list[dict[str, Any]]:
        """Feedback on a scan, oldest first: all of it (brands None), or what `brands`' reviewers may see."""
        query = (
            select(ScanFeedback, ScanFeedbackBrand.brand)
            .outerjoin(ScanFeedbackBrand, ScanFeedbackBrand.feedback_id == ScanFeedback.feedback_id)
            .where(ScanFeedback.scan_id == scan_id)
            .order_by(ScanFeedback.created_at)
        )
        visible = given_for(brands)
        if visible is not None:
            query = query.where(visible)
        with self._sessions() as session:
            return [_as_dict(row, brand) for row, brand in session.execute(query)]


def _as_dict(row: ScanFeedback, brand: str | None) -> dict[str, Any]:
    return {
        "feedback_id": row.feedback_id,
        "scan_id": row.scan_id,
        "verdict": row.verdict,
        "note": row.note,
        "brand": brand,
        "created_at": row.created_at.isoformat(),
        "added_image_ids": list(row.added_image_ids),
        "index_version": row.index_version,
    }
