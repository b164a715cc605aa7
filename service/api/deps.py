"""Dependencies shared by the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, UploadFile

from service.api.errors import RequestRejected
from service.engine import ScanEngine
from service.metrics import ServiceMetrics
from service.runtime import ServiceRuntime
from service.scanning.photo_prep import PhotoInput


# async: FastAPI runs a plain `def` dependency on a worker thread, a thread hop per request for a dictionary lookup
async def get_runtime(request: Request) -> ServiceRuntime:
    runtime: ServiceRuntime = request.app.state.runtime
    return runtime


async def get_engine(request: Request) -> ScanEngine:
    runtime: ServiceRuntime = request.app.state.runtime
    return runtime.require_engine()


async def get_metrics(request: Request) -> ServiceMetrics:
    metrics: ServiceMetrics = request.app.state.metrics
    return metrics


RuntimeDep = Annotated[ServiceRuntime, Depends(get_runtime)]
EngineDep = Annotated[ScanEngine, Depends(get_engine)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]


async def read_upload(upload: UploadFile, max_bytes: int) -> PhotoInput:
    """Read an uploaded file, refusing (413) as soon as it passes `max_bytes`."""
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise RequestRejected(f"file {upload.filename or ''} is larger than {max_bytes} bytes", 413)
    return PhotoInput(data=data, filename=upload.filename, content_type=upload.content_type)
