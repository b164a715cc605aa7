"""Bulk catalog upload (an archive, imported in the background) and export (the same archive format, streamed)."""

from __future__ import annotations

import re
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Response, UploadFile
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from reference_catalog import AuditEvent
from service.access.policy import check_catalog_brand, default_brand
from service.api.auth import CatalogKey
from service.api.deps import CoreDep, RuntimeDep
from service.api.errors import RequestRejected
from service.api.schemas import ImportJobOut, ImportJobsOut, error_responses
from service.imports.export import ExportFormat, catalog_refs, stream_catalog_archive

IMPORTS_PATH = "/v1/catalog/imports"
ARCHIVE_HELP = "zip or tar.gz holding a manifest.csv (path,brand,product,label) or brand/product/authentic|counterfeit/ folders"
router = APIRouter(prefix="/v1/catalog", tags=["catalog"])


@router.post(
    "/imports",
    status_code=202,
    response_model=ImportJobOut,
    responses={
        202: {"description": "Queued", "headers": {"Location": {"description": "The job's URL", "schema": {"type": "string"}}}},
        **error_responses(400, 401, 403, 413, 415, 422, 429, 503),
    },
)
async def submit_import(
    runtime: RuntimeDep,
    principal: CatalogKey,
    response: Response,
    archive: Annotated[UploadFile, File(description=ARCHIVE_HELP)],
    split: Annotated[str | None, Form(max_length=200, description="Import only manifest rows of this split")] = None,
) -> dict[str, Any]:
    """Queue an import; poll the job at the Location header. A brand key imports into its own brands only."""
    limit = runtime.settings.imports.max_upload_bytes
    data = await archive.read(limit + 1)
    if len(data) > limit:
        raise RequestRejected(f"the archive is larger than {limit} bytes (import_max_upload_bytes)", 413)
    job = await run_in_threadpool(partial(runtime.imports.submit, data, principal, archive.filename, split))
    response.headers["Location"] = f"{IMPORTS_PATH}/{job['job_id']}"
    return job


@router.get("/imports", response_model=ImportJobsOut, responses=error_responses(401, 403, 422, 429, 503))
async def list_imports(
    runtime: RuntimeDep, principal: CatalogKey, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> dict[str, Any]:
    """Import jobs, newest first: all of them for admins, the caller's own for brand keys."""
    return {"jobs": await run_in_threadpool(runtime.imports.list, principal, limit)}


@router.get("/imports/{job_id}", response_model=ImportJobOut, responses=error_responses(401, 403, 404, 422, 429, 503))
async def get_import(job_id: str, runtime: RuntimeDep, principal: CatalogKey) -> dict[str, Any]:
    job = await run_in_threadpool(runtime.imports.get, job_id, principal)
    if job is None:
        raise RequestRejected(f"no import job {job_id!r}", 404)  # the same answer whether it exists or not
    return job


@router.get(
    "/export",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/zip": {}, "application/gzip": {}}, "description": "the catalog archive"},
        **error_responses(401, 403, 404, 422, 429, 503),
    },
)
async def export_catalog(
    core: CoreDep,
    principal: CatalogKey,
    brand: Annotated[str | None, Query(max_length=200, description="Default: the key's brand; admins: everything")] = None,
    format: Annotated[ExportFormat, Query(description="zip or tar.gz")] = "zip",
) -> StreamingResponse:
    """A brand's reference images with a manifest.csv, as an archive POST /v1/catalog/imports reads back."""
    brand = default_brand(principal, brand)
    if brand is not None:
        known = {summary.name for summary in await run_in_threadpool(core.catalog.list_brands)}
        check_catalog_brand(principal, brand, known)  # 404, the same answer for another's brand
    refs = await run_in_threadpool(catalog_refs, core, brand)
    await run_in_threadpool(
        core.audit.record, AuditEvent(principal.key_id, "catalog.export", brand, brand, {"format": format, "images": len(refs)})
    )
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", brand or "all").strip("-") or "catalog"
    suffix = "zip" if format == "zip" else "tar.gz"
    return StreamingResponse(
        stream_catalog_archive(core, brand, format, refs),
        media_type="application/zip" if format == "zip" else "application/gzip",
        headers={"Content-Disposition": f'attachment; filename="catalog-{name}.{suffix}"'},
    )
