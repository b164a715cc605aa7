"""GET /v1/scans/{scan_id}: the stored record of a scan."""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from service.access.policy import feedback_brands
from service.access.reads import readable_feedback, readable_scan, require_scan_access
from service.api.auth import AnyKey, ReviewKey
from service.api.deps import CoreDep, MetricsDep
from service.api.schemas import FeedbackIn, error_responses
from service.scanning.result import FeedbackOut, ScanResult

router = APIRouter(prefix="/v1/scans", tags=["scans"])


@router.get("/{scan_id}", response_model=ScanResult, responses=error_responses(401, 404, 422, 429, 503))
async def get_scan(scan_id: str, core: CoreDep, principal: AnyKey) -> ScanResult:
    """The stored record of a scan, with any reviewer feedback on it (brand keys: scans that concern their brands, with
    their brands' evidence and feedback only, and the figures computed from that evidence)."""
    record = await run_in_threadpool(readable_scan, core, principal, scan_id)  # 404, not 403: no hint that it exists
    return record.with_feedback(await run_in_threadpool(readable_feedback, core, principal, scan_id))


@router.post(
    "/{scan_id}/feedback",
    status_code=201,
    response_model=FeedbackOut,
    responses=error_responses(400, 401, 403, 404, 409, 413, 422, 429, 503),
)
async def give_feedback(
    scan_id: str, body: FeedbackIn, core: CoreDep, metrics: MetricsDep, principal: ReviewKey
) -> dict[str, Any]:
    """Record a reviewer's verdict, for the reviewer's brand (`brand`, or the one of the key's brands the scan
    concerns). `confirmed_counterfeit` adds the scan's photos to the catalog as known fakes; on a scan that concerns
    other brands too, a brand key adds the photos that match its own brands' catalog."""
    await run_in_threadpool(require_scan_access, core, principal, scan_id)
    allowed = feedback_brands(principal)
    result = await run_in_threadpool(
        partial(core.review.give_feedback, scan_id, body.verdict, body.note, body.brand, body.product,
                actor=principal.key_id, allowed_brands=allowed)
    )  # fmt: skip
    metrics.feedback.labels(body.verdict).inc()
    return result
