"""Dependencies shared by the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, UploadFile

from service.api.errors import RequestRejected
from service.core import ServiceCore
from service.metrics import ServiceMetrics
from service.runtime import ServiceRuntime
from service.scanning.photo_prep import PhotoInput


# async: FastAPI runs a plain `def` dependency on a worker thread, a thread hop per request for a dictionary lookup
async def get_runtime(request: Request) -> ServiceRuntime:
    runtime: ServiceRuntime = request.app.state.runtime
    return runtime


async def get_core(request: Request) -> ServiceCore:
    """The service's parts (service/core.py); 503 while the model and index are still loading."""
    runtime: ServiceRuntime = request.app.state.runtime
    return runtime.require_core()


async def get_metrics(request: Request) -> ServiceMetrics:
    metrics: ServiceMetrics = request.app.state.metrics
    return metrics


RuntimeDep = Annotated[ServiceRuntime, Depends(get_runtime)]
CoreDep = Annotated[ServiceCore, Depends(get_core)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]


async def read_upload(upload: UploadFile, max_bytes: int) -> PhotoInput:
    """Read an uploaded file, refusing (413) as soon as it passes `max_bytes`."""
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise RequestRejected(f"file {upload.filename or ''} is larger than {max_bytes} bytes", 413)
    return PhotoInput(data=data, filename=upload.filename, content_type=upload.content_type)
