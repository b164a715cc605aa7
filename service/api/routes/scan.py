"""POST /v1/scan: risk, verdict and evidence for one listing's photos."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, UploadFile

from service.access.policy import redact_scan, scan_scope
from service.api.auth import ScanKey
from service.api.deps import CoreDep, MetricsDep, RuntimeDep, read_upload
from service.api.schemas import error_responses
from service.scanning.batching import ScanBatcher
from service.scanning.pipeline import ScanRequest
from service.scanning.result import ScanResult

router = APIRouter(prefix="/v1", tags=["scan"])


async def get_batcher(runtime: RuntimeDep) -> ScanBatcher:
    # async: FastAPI runs a plain `def` dependency on a worker thread, a hop per request for nothing
    return runtime.batcher()


BatcherDep = Annotated[ScanBatcher, Depends(get_batcher)]


@router.post("/scan", response_model=ScanResult, responses=error_responses(400, 401, 403, 413, 415, 422, 429, 503))
async def scan(
    core: CoreDep,
    metrics: MetricsDep,
    batcher: BatcherDep,
    principal: ScanKey,
    images: Annotated[list[UploadFile], File(description="1..N photos of one listing (JPEG, PNG or WebP)")],
    brand: Annotated[str | None, Form(max_length=200)] = None,
    product: Annotated[str | None, Form(max_length=200)] = None,
    listing_id: Annotated[str | None, Form(max_length=200)] = None,
) -> ScanResult:
    """Scan a listing's photos against the reference catalog (restricted to `brand`/`product` when given).

    The photos join those of concurrent scans in one model batch; 429 with Retry-After when the queue is full.
    """
    started = time.perf_counter()
    photos = [await read_upload(upload, core.settings.limits.max_image_bytes) for upload in images]
    scope = scan_scope(principal, brand or None)
    result = await batcher.scan(ScanRequest(photos, scope, product or None, listing_id or None, actor=principal.key_id))
    metrics.scans.labels(result.verdict).inc()
    metrics.photos.inc(len(photos))
    metrics.scan_seconds.observe(time.perf_counter() - started)
    return redact_scan(principal, result)
