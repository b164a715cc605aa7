"""GET /v1/scans/{scan_id}: the stored record of a scan."""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from service.access.api_keys import Principal
from service.api.auth import AnyKey, ReviewKey, may_read_scan, redact_scan
from service.api.deps import EngineDep, MetricsDep
from service.api.errors import RequestRejected
from service.api.schemas import FeedbackIn, FeedbackOut, ScanOut, error_responses
from service.engine import ScanEngine
from service.scanning.brand_views import view_scoring

router = APIRouter(prefix="/v1/scans", tags=["scans"])


def readable_feedback(engine: ScanEngine, principal: Principal, scan_id: str) -> list[dict[str, Any]]:
    """The feedback on a scan this key may read: a brand key, its brands' only (another brand's review stays its own);
    the scanner that made the scan, each review's verdict and brand without the reviewer's note or the catalog images
    it added (brands' internal matters, not the marketplace pipeline's)."""
    feedback = engine.feedback.for_scan(scan_id, principal.brands if principal.is_brand else None)
    if principal.role == "scanner":
        return [{**item, "note": None, "added_image_ids": []} for item in feedback]
    return feedback


@router.get("/{scan_id}", response_model=ScanOut, responses=error_responses(401, 404, 422, 429, 503))
async def get_scan(scan_id: str, engine: EngineDep, principal: AnyKey) -> dict[str, Any]:
    """The stored record of a scan, with any reviewer feedback on it (brand keys: scans that concern their brands, with
    their brands' evidence and feedback only, and the figures computed from that evidence)."""
    await _require_access(engine, principal, scan_id)
    record = await run_in_threadpool(engine.scans.get, scan_id)
    if record is None:
        raise RequestRejected(f"no scan {scan_id!r}", 404)
    record["feedback"] = await run_in_threadpool(readable_feedback, engine, principal, scan_id)
    return redact_scan(principal, record, view_scoring(engine.model, record) if principal.is_brand else None)


async def _require_access(engine: ScanEngine, principal: Principal, scan_id: str) -> None:
    access = await run_in_threadpool(engine.scans.access, scan_id)
    if access is None or not may_read_scan(principal, *access):
        raise RequestRejected(f"no scan {scan_id!r}", 404)  # 404, not 403: no hint that it exists


@router.post(
    "/{scan_id}/feedback",
    status_code=201,
    response_model=FeedbackOut,
    responses=error_responses(400, 401, 403, 404, 409, 413, 422, 429, 503),
)
async def give_feedback(
    scan_id: str, body: FeedbackIn, engine: EngineDep, metrics: MetricsDep, principal: ReviewKey
) -> dict[str, Any]:
    """Record a reviewer's verdict, for the reviewer's brand (`brand`, or the one of the key's brands the scan
    concerns). `confirmed_counterfeit` adds the scan's photos to the catalog as known fakes; on a scan that concerns
    other brands too, a brand key adds the photos that match its own brands' catalog."""
    await _require_access(engine, principal, scan_id)
    allowed = principal.brands if principal.is_brand else None
    result = await run_in_threadpool(
        partial(engine.give_feedback, scan_id, body.verdict, body.note, body.brand, body.product,
                actor=principal.key_id, allowed_brands=allowed)
    )  # fmt: skip
    metrics.feedback.labels(body.verdict).inc()
    return result
