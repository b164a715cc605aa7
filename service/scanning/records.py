"""Scan records: what was scanned (input hashes), with which model and index, and what was answered."""

from __future__ import annotations

import secrets
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    ColumnElement,
    Engine,
    Float,
    ForeignKey,
    Index,
    String,
    Table,
    and_,
    column,
    func,
    insert,
    or_,
    select,
    table,
)
from sqlalchemy.orm import Mapped, mapped_column, sessionmaker

from reference_catalog.database import Base
from service.scanning.result import ScanResult


class ScanRecord(Base):
    __tablename__ = "scan_records"
    scan_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    listing_id: Mapped[str | None] = mapped_column(String(200), index=True)
    created_at: Mapped[datetime] = mapped_column(index=True)
    verdict: Mapped[str] = mapped_column(String(40), index=True)
    risk: Mapped[float | None] = mapped_column(Float)
    model_fingerprint: Mapped[str] = mapped_column(String(64))
    index_version: Mapped[str] = mapped_column(String(80))
    input_sha256: Mapped[list[str]] = mapped_column(JSON)
    result: Mapped[dict[str, Any]] = mapped_column(JSON)


class ScanAccess(Base):
    """Who may read a scan: the key that made it, and the brands it concerns (asked for, or matched first)."""

    __tablename__ = "scan_access"
    scan_id: Mapped[str] = mapped_column(ForeignKey("scan_records.scan_id"), primary_key=True)
    created_by: Mapped[str] = mapped_column(String(80), index=True)
    brands: Mapped[list[str]] = mapped_column(JSON)


def _table(model: type[Any]) -> Table:
    """A mapped class's Core table (what `insert` takes to skip the ORM)."""
    found: Table = model.__table__
    return found


class ScanSubject(Base):
    """One row per (brand, product) a scan concerns (the pairs behind `concerned_brands`), so that review queues and
    dashboards find a brand's scans through an index instead of reading every record. A database made before this
    table had it filled from its records by the migration that created it (service/db/migrations)."""

    __tablename__ = "scan_subjects"
    __table_args__ = (Index("ix_scan_subjects_brand_product", "brand", "product"),)
    scan_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    brand: Mapped[str] = mapped_column(String(200), primary_key=True)
    product: Mapped[str] = mapped_column(String(200), primary_key=True)  # "" when a scan named its brand only


class ScanBrandView(Base):
    """The verdict and risk one brand sees of a scan that concerns several (`service.scanning.brand_views`: computed from its own
    catalogs' evidence only), so that its review queue and dashboard select and count by what it sees. Scans that
    concern one brand, and those recorded before this table, have none: the record's own verdict is the brand's."""

    __tablename__ = "scan_brand_views"
    scan_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    brand: Mapped[str] = mapped_column(String(200), primary_key=True)
    verdict: Mapped[str] = mapped_column(String(40))
    risk: Mapped[float | None] = mapped_column(Float)


BrandViews = dict[str, tuple[str, float | None]]  # brand -> (verdict, risk) of one scan


def _own_view(brands: Collection[str]) -> Any:
    return select(ScanBrandView.scan_id).where(
        ScanBrandView.scan_id == ScanRecord.scan_id, ScanBrandView.brand.in_(sorted(brands))
    )


def seen_as(brands: Collection[str] | None, verdicts: Collection[str], min_risk: float | None = None) -> ColumnElement[bool]:
    """A condition on ScanRecord: what `brands` (None: an admin, the whole record) see of the scan has one of
    `verdicts` and at least `min_risk`: their own stored view where the scan concerns several brands, else the record."""
    record = [ScanRecord.verdict.in_(sorted(verdicts))] + ([ScanRecord.risk >= min_risk] if min_risk is not None else [])
    if brands is None:
        return and_(*record)
    own = _own_view(brands).where(ScanBrandView.verdict.in_(sorted(verdicts)))
    if min_risk is not None:
        own = own.where(ScanBrandView.risk >= min_risk)
    return or_(own.exists(), and_(~_own_view(brands).exists(), *record))


def verdict_seen(brands: Collection[str] | None) -> ColumnElement[Any]:
    """The verdict `brands` see of a scan (see `seen_as`); a key of several brands that each have a view of the same
    scan gets one of their verdicts."""
    if brands is None:
        return ScanRecord.verdict.expression
    own = (
        select(func.min(ScanBrandView.verdict))
        .where(ScanBrandView.scan_id == ScanRecord.scan_id, ScanBrandView.brand.in_(sorted(brands)))
        .scalar_subquery()
    )
    return func.coalesce(own, ScanRecord.verdict)


FEEDBACK_TABLE = table(
    "scan_feedback", column("scan_id")
)  # service/scanning/feedback.py's table, named here to avoid an import cycle


def scan_subjects(result: ScanResult) -> list[tuple[str, str]]:
    """(brand, product) pairs of a scan: asked for, and each photo's closest matches; their brands: `concerned_brands`."""
    pairs = {(result.brand, result.product or "")} if result.brand else set()
    for image in result.images:
        pairs.update((m.brand, m.product) for m in image.matches[:3])
        pairs.update((d.brand, d.product) for d in image.near_duplicates)
    return sorted(pairs)


def concerning(brands: Collection[str] | None, product: str | None = None) -> ColumnElement[bool] | None:
    """A condition on ScanRecord: the scan concerns one of `brands` (None: any brand) and, when given, `product`."""
    if brands is None and not product:
        return None
    subject = select(ScanSubject.scan_id).where(ScanSubject.scan_id == ScanRecord.scan_id)
    if brands is not None:
        subject = subject.where(ScanSubject.brand.in_(sorted(brands)))
    if product:
        subject = subject.where(ScanSubject.product == product)
    return subject.exists()


def concerned_brands(result: ScanResult) -> list[str]:
    """The brand a scan was restricted to, and the brands of each photo's closest matches."""
    return brands_of(scan_subjects(result))


def brands_of(subjects: Sequence[tuple[str, str]]) -> list[str]:
    """The brands of a scan's (brand, product) subjects (`scan_subjects`), each once, sorted."""
    return sorted({brand for brand, _ in subjects})


def new_scan_id() -> str:
    return "scan_" + secrets.token_urlsafe(16)


class ScanRecordStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def save(self, result: ScanResult, created_at: datetime, model_fingerprint: str, created_by: str = "system") -> None:
        self.save_many([(result, created_at, model_fingerprint, created_by)])

    def save_many(
        self, records: Sequence[tuple[ScanResult, datetime, str, str]], views: dict[str, BrandViews] | None = None
    ) -> None:
        """Store (result, created_at, model fingerprint, created by) records in one transaction: all or none; `views`
        (by scan id) holds each brand's verdict and risk of the scans that concern several brands."""
        if not records:
            return
        rows, access = [], []
        subjects: list[dict[str, str]] = []
        brand_views = [
            {"scan_id": scan_id, "brand": brand, "verdict": verdict, "risk": risk}
            for scan_id, by_brand in (views or {}).items()
            for brand, (verdict, risk) in by_brand.items()
        ]
        for result, created_at, model_fingerprint, created_by in records:
            rows.append(
                {
                    "scan_id": result.scan_id,
                    "listing_id": result.listing_id,
                    "created_at": created_at,
                    "verdict": result.verdict,
                    "risk": result.risk,
                    "model_fingerprint": model_fingerprint,
                    "index_version": result.index_version,
                    "input_sha256": [image.sha256 for image in result.images],
                    "result": result.plain(),
                }
            )
            pairs = scan_subjects(result)  # once per scan: the access row's brands and the subject rows both come from it
            access.append({"scan_id": result.scan_id, "created_by": created_by, "brands": brands_of(pairs)})
            subjects.extend({"scan_id": result.scan_id, "brand": b, "product": p} for b, p in pairs)
        # Core executemany on the tables, one statement per table for the whole batch; the ORM's bulk path here took a
        # large share of the service's Python (GIL) time per scanned photo (see benchmarks/README.md, "Served throughput")
        with self._engine.begin() as connection:
            connection.execute(insert(_table(ScanRecord)), rows)
            connection.execute(insert(_table(ScanAccess)), access)
            if subjects:
                connection.execute(insert(_table(ScanSubject)), subjects)
            if brand_views:
                connection.execute(insert(_table(ScanBrandView)), brand_views)

    def access(self, scan_id: str) -> tuple[str, list[str]] | None:
        """(created_by, brands) of a scan, or None when there is no such scan."""
        with self._sessions() as session:
            row = session.get(ScanAccess, scan_id)
            if row is not None:
                return row.created_by, list(row.brands)
            return ("system", []) if session.get(ScanRecord, scan_id) is not None else None

    def get(self, scan_id: str) -> ScanResult | None:
        """The stored result of a scan (records of earlier releases too: see service/scanning/result.py), or None."""
        with self._sessions() as session:
            record = session.get(ScanRecord, scan_id)
            return ScanResult.model_validate(record.result) if record else None

    def query(
        self,
        verdicts: Collection[str] | None = None,
        brands: Collection[str] | None = None,
        product: str | None = None,
        min_risk: float | None = None,
        limit: int = 25,
        offset: int = 0,
        reviewed: bool | None = None,
    ) -> tuple[list[ScanResult], int]:
        """Stored results newest first, filtered by verdict, brand (None: any), product, minimum risk and whether a
        reviewer gave feedback; and how many match in all."""
        conditions: list[ColumnElement[bool]] = []
        if reviewed is not None:
            feedback = select(FEEDBACK_TABLE.c.scan_id).where(FEEDBACK_TABLE.c.scan_id == ScanRecord.scan_id).exists()
            conditions.append(feedback if reviewed else ~feedback)
        if verdicts is not None:
            conditions.append(seen_as(brands, verdicts, min_risk))
        elif min_risk is not None:
            conditions.append(ScanRecord.risk >= min_risk)
        scope = concerning(brands, product)
        if scope is not None:
            conditions.append(scope)
        with self._sessions() as session:
            total = session.scalar(select(func.count()).select_from(ScanRecord).where(*conditions)) or 0
            rows = session.scalars(
                select(ScanRecord)
                .where(*conditions)
                .order_by(ScanRecord.created_at.desc(), ScanRecord.scan_id)
                .limit(limit)
                .offset(offset)
            )
            return [ScanResult.model_validate(row.result) for row in rows], total

    def daily_counts(self, since: datetime, brands: Collection[str] | None = None) -> list[tuple[str, str, int]]:
        """(UTC day as YYYY-MM-DD, verdict, scans) since `since`, for scans that concern `brands` (None: all)."""
        day = func.date(ScanRecord.created_at)
        verdict = verdict_seen(brands)
        query = select(day, verdict, func.count()).where(ScanRecord.created_at >= since).group_by(day, verdict)
        scope = concerning(brands)
        if scope is not None:
            query = query.where(scope)
        with self._sessions() as session:
            return [(str(d), str(verdict), int(n)) for d, verdict, n in session.execute(query)]
