"""GET /v1/scans/{scan_id}: the stored record of a scan."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from service.api.deps import EngineDep
from service.errors import RequestRejected
from service.schemas import ScanOut

router = APIRouter(prefix="/v1/scans", tags=["scans"])


@router.get("/{scan_id}", response_model=ScanOut)
async def get_scan(scan_id: str, engine: EngineDep) -> dict[str, Any]:
    record = await run_in_threadpool(engine.scans.get, scan_id)
    if record is None:
        raise RequestRejected(f"no scan {scan_id!r}", 404)
    return record
