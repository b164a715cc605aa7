"""Read-only queries behind the console pages: the catalog tree, provenance, and the dashboard's figures."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import sessionmaker

from reference_catalog import ImageRef
from reference_catalog.audit import AuditEntry
from reference_catalog.models import ReferenceImage
from service.core import ServiceCore
from service.scanning.feedback import ScanFeedback, given_for
from service.scanning.records import ScanRecord, concerning, seen_as, verdict_seen
from service.scanning.result import FLAGGED, ScanResult

VERDICTS = ("likely_counterfeit", "needs_review", "likely_authentic", "not_in_catalog")
REVIEWER_VERDICTS = ("confirmed_counterfeit", "confirmed_authentic", "not_applicable")


@dataclass(frozen=True)
class Provenance:
    actor: str
    actor_name: str | None
    at: datetime


def catalog_images(
    core: ServiceCore,
    brands: frozenset[str] | None,
    brand: str | None,
    product: str | None,
    label: str | None,
    limit: int = 48,
    offset: int = 0,
) -> tuple[list[ImageRef], int]:
    """One page of the reference images of `brands` (a user's visible brands; None: all), newest first, narrowed to a
    brand, product and label; and the total. The API's image list pages with the same query (in SQL)."""
    return core.catalog.image_page(brands, brand, product, label, limit, offset, newest_first=True)


def provenance(core: ServiceCore, image_ids: Collection[str]) -> dict[str, Provenance]:
    """Who added each image and when, from the audit log (the catalog rows keep the source, not the key)."""
    if not image_ids:
        return {}
    names = {key["key_id"]: key["name"] for key in core.keys.list()}
    sessions = sessionmaker(core.database)
    query = select(AuditEntry.target, AuditEntry.actor, AuditEntry.at).where(
        AuditEntry.action == "catalog.add", AuditEntry.target.in_(sorted(image_ids))
    )
    found: dict[str, Provenance] = {}
    with sessions() as session:
        for target, actor, at in session.execute(query):
            found[str(target)] = Provenance(actor, names.get(actor), at)
    return found


def existing_images(core: ServiceCore, image_ids: Iterable[str]) -> set[str]:
    """Which of these reference image ids are still in the catalog."""
    ids = sorted(set(image_ids))
    if not ids:
        return set()
    with sessionmaker(core.database)() as session:
        return set(session.scalars(select(ReferenceImage.public_id).where(ReferenceImage.public_id.in_(ids))))


def latest_feedback(core: ServiceCore, scan_ids: Collection[str], brands: frozenset[str] | None = None) -> dict[str, str]:
    """The latest reviewer verdict of each of these scans that has one (given for `brands`; None: by anyone)."""
    if not scan_ids:
        return {}
    query = select(ScanFeedback.scan_id, ScanFeedback.verdict, ScanFeedback.created_at).where(
        ScanFeedback.scan_id.in_(sorted(scan_ids))
    )
    visible = given_for(brands)
    if visible is not None:
        query = query.where(visible)
    latest: dict[str, tuple[datetime, str]] = {}
    with sessionmaker(core.database)() as session:
        for scan_id, verdict, at in session.execute(query):
            if scan_id not in latest or at >= latest[scan_id][0]:
                latest[scan_id] = (at, verdict)
    return {scan_id: verdict for scan_id, (_, verdict) in latest.items()}


def queue_scans(
    core: ServiceCore,
    verdicts: Collection[str],
    brands: frozenset[str] | None,
    product: str | None,
    min_risk: float | None,
    reviewed: bool | None,
    limit: int,
    offset: int,
) -> tuple[list[ScanResult], int]:
    """One page of stored scans, newest first, that concern `brands` (None: any), filtered by verdict, product, minimum
    risk and whether `brands`' reviewers (None: anyone) answered; and how many match in all."""
    conditions: list[ColumnElement[bool]] = [seen_as(brands, verdicts, min_risk)]  # as these brands see the scan
    scope = concerning(brands, product)
    if scope is not None:
        conditions.append(scope)
    if reviewed is not None:
        answered = select(ScanFeedback.scan_id).where(ScanFeedback.scan_id == ScanRecord.scan_id)
        visible = given_for(brands)
        exists = (answered.where(visible) if visible is not None else answered).exists()
        conditions.append(exists if reviewed else ~exists)
    page = select(ScanRecord).where(*conditions).order_by(ScanRecord.created_at.desc(), ScanRecord.scan_id)
    with sessionmaker(core.database)() as session:
        total = session.scalar(select(func.count()).select_from(ScanRecord).where(*conditions)) or 0
        rows = [ScanResult.model_validate(row.result) for row in session.scalars(page.limit(limit).offset(offset))]
    return rows, total


@dataclass
class DayRow:
    day: date
    total: int = 0
    by_verdict: Counter[str] = field(default_factory=Counter)

    @property
    def flagged(self) -> int:
        return sum(self.by_verdict[v] for v in FLAGGED)

    @property
    def share_flagged(self) -> float:
        return self.flagged / self.total if self.total else 0.0


@dataclass
class Dashboard:
    days: list[DayRow]
    totals: Counter[str]
    agreement: dict[str, Counter[str]]  # service verdict -> latest reviewer verdict -> scans

    @property
    def total(self) -> int:
        return sum(self.totals.values())

    @property
    def flagged(self) -> int:
        return sum(self.totals[v] for v in FLAGGED)

    @property
    def busiest(self) -> int:
        return max((row.total for row in self.days), default=0)

    @property
    def reviewed_total(self) -> int:
        return sum(sum(counts.values()) for counts in self.agreement.values())

    def confirmed_share(self, verdict: str) -> float | None:
        """Of this verdict's scans that a reviewer called counterfeit or authentic: the share called counterfeit."""
        counts = self.agreement.get(verdict, Counter())
        decided = counts["confirmed_counterfeit"] + counts["confirmed_authentic"]
        return counts["confirmed_counterfeit"] / decided if decided else None


def dashboard(core: ServiceCore, brands: frozenset[str] | None, days: int, today: date | None = None) -> Dashboard:
    """Scans per UTC day and verdict over the last `days` days, and the reviewers' latest verdict on those scans."""
    today = today or datetime.now(UTC).date()
    first = today - timedelta(days=days - 1)
    since = datetime(first.year, first.month, first.day, tzinfo=UTC)
    rows = {first + timedelta(days=i): DayRow(first + timedelta(days=i)) for i in range(days)}
    totals: Counter[str] = Counter()
    for day, verdict, count in core.scans.daily_counts(since, brands):
        row = rows.get(date.fromisoformat(day))
        if row is not None:
            row.total += count
            row.by_verdict[verdict] += count
            totals[verdict] += count
    query = (
        select(ScanFeedback.scan_id, verdict_seen(brands), ScanFeedback.verdict, ScanFeedback.created_at)
        .join(ScanRecord, ScanRecord.scan_id == ScanFeedback.scan_id)
        .where(ScanRecord.created_at >= since)
    )
    scope = concerning(brands)
    if scope is not None:
        query = query.where(scope)
    visible = given_for(brands)  # a brand counts its own reviewers' answers
    if visible is not None:
        query = query.where(visible)
    latest: dict[str, tuple[datetime, str, str]] = {}
    with sessionmaker(core.database)() as session:
        for scan_id, service_verdict, reviewer_verdict, at in session.execute(query):
            if scan_id not in latest or at >= latest[scan_id][0]:
                latest[scan_id] = (at, service_verdict, reviewer_verdict)
    agreement: dict[str, Counter[str]] = {}
    for _, service_verdict, reviewer_verdict in latest.values():
        agreement.setdefault(service_verdict, Counter())[reviewer_verdict] += 1
    return Dashboard(sorted(rows.values(), key=lambda r: r.day, reverse=True), totals, agreement)


def scan_summary(record: ScanResult) -> dict[str, Any]:
    """What the review queue shows of a (redacted) scan: its subject and top match."""
    top = next((image.matches[0] for image in record.images if image.matches), None)
    return {
        "scan_id": record.scan_id,
        "listing_id": record.listing_id,
        "created_at": datetime.fromisoformat(record.created_at) if record.created_at else None,
        "verdict": record.verdict,
        "risk": record.risk,
        "calibrated": record.calibrated,
        "brand": record.brand or (top.brand if top else None),
        "product": record.product or (top.product if top else None),
        "photos": len(record.images),
        "top": top,
    }
