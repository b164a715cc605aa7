"""POST /v1/scan: risk, verdict and evidence for one listing's photos."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, UploadFile
from starlette.concurrency import run_in_threadpool

from service.api.deps import EngineDep, MetricsDep, read_upload
from service.schemas import ScanOut

router = APIRouter(prefix="/v1", tags=["scan"])


@router.post("/scan", response_model=ScanOut)
async def scan(
    engine: EngineDep,
    metrics: MetricsDep,
    images: Annotated[list[UploadFile], File(description="1..N photos of one listing (JPEG, PNG or WebP)")],
    brand: Annotated[str | None, Form(max_length=200)] = None,
    product: Annotated[str | None, Form(max_length=200)] = None,
    listing_id: Annotated[str | None, Form(max_length=200)] = None,
) -> dict[str, Any]:
    """Scan a listing's photos against the reference catalog (restricted to `brand`/`product` when given)."""
    started = time.perf_counter()
    photos = [await read_upload(upload, engine.settings.max_image_bytes) for upload in images]
    result = await run_in_threadpool(engine.scan, photos, brand or None, product or None, listing_id or None)
    metrics.scans.labels(result["verdict"]).inc()
    metrics.photos.inc(len(photos))
    metrics.scan_seconds.observe(time.perf_counter() - started)
    return result
