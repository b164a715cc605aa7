"""GET /v1/scans/{scan_id}: the stored record of a scan."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from service.api.deps import EngineDep, MetricsDep
from service.errors import RequestRejected
from service.schemas import FeedbackIn, FeedbackOut, ScanOut

router = APIRouter(prefix="/v1/scans", tags=["scans"])


@router.get("/{scan_id}", response_model=ScanOut)
async def get_scan(scan_id: str, engine: EngineDep) -> dict[str, Any]:
    """The stored record of a scan, with any reviewer feedback on it."""
    record = await run_in_threadpool(engine.scans.get, scan_id)
    if record is None:
        raise RequestRejected(f"no scan {scan_id!r}", 404)
    record["feedback"] = await run_in_threadpool(engine.feedback.for_scan, scan_id)
    return record


@router.post("/{scan_id}/feedback", status_code=201, response_model=FeedbackOut)
async def give_feedback(scan_id: str, body: FeedbackIn, engine: EngineDep, metrics: MetricsDep) -> dict[str, Any]:
    """Record a reviewer's verdict. `confirmed_counterfeit` adds the scan's photos to the catalog as known fakes."""
    result = await run_in_threadpool(engine.give_feedback, scan_id, body.verdict, body.note, body.brand, body.product)
    metrics.feedback.labels(body.verdict).inc()
    return result
