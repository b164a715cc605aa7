"""Catalog pages: brands ▸ products ▸ reference images; upload (images, archives), delete, relabel, thumbnails."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from embeddings import ImageRejected
from reference_catalog import LABELS, ImageRef
from service.access.api_keys import Principal
from service.access.policy import brand_choices, may_manage_brand, visible_brands
from service.access.reads import readable_image
from service.api.deps import read_upload
from service.api.errors import RequestRejected, rejection_status
from service.console.common import (
    IMAGE_HEADERS,
    PREFIX,
    ConsoleError,
    CoreDep,
    CsrfUserDep,
    Page,
    StateDep,
    UserDep,
    import_jobs,
    is_htmx,
    page_number,
    page_of,
    redirect,
    render,
)
from service.console.queries import catalog_images, provenance
from service.console.thumbnails import THUMBNAIL_SIZES
from service.core import ServiceCore
from service.errors import DomainError, NotFound, UnsupportedFormat

router = APIRouter(prefix=PREFIX, include_in_schema=False)

PAGE_SIZE = 48
ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz")
RUNNING_STATES = ("queued", "running")


def catalog_url(brand: str | None = None, product: str | None = None, **params: Any) -> str:
    query = {k: v for k, v in {"brand": brand, "product": product, **params}.items() if v not in (None, "")}
    return f"{PREFIX}/catalog" + (f"?{urlencode(query)}" if query else "")


async def owned_image(core: ServiceCore, principal: Principal, image_id: str) -> ImageRef:
    """A reference image the user may see; another brand's image is a 404, exactly like one that does not exist."""
    try:
        return await run_in_threadpool(readable_image, core, principal, image_id)
    except NotFound as exc:
        raise ConsoleError(404, "There is no such reference image in your catalog.") from exc


def _card_context(core: ServiceCore, refs: list[ImageRef]) -> dict[str, Any]:
    return {"provenance": provenance(core, [ref.image_id for ref in refs]), "labels": LABELS}


@router.get("/catalog", response_class=HTMLResponse)
async def catalog_page(
    request: Request,
    core: CoreDep,
    user: UserDep,
    brand: str | None = None,
    product: str | None = None,
    label: str | None = None,
    page: str | None = None,
) -> Response:
    principal = user.principal
    if brand and not may_manage_brand(principal, brand):
        raise ConsoleError(404, "There is no such brand in your catalog.")
    if label not in LABELS:
        label = None
    summaries = {b.name: b for b in await run_in_threadpool(core.catalog.list_brands)}
    brand_names = brand_choices(principal, summaries)
    if not brand and len(brand_names) == 1 and principal.is_brand:
        return redirect(catalog_url(brand_names[0]))
    products = [p for p in await run_in_threadpool(core.catalog.list_products, brand) if p.brand == brand] if brand else []
    query = partial(catalog_images, core, visible_brands(principal), brand, product or None, label, PAGE_SIZE)
    shown: Page[ImageRef] = await page_of(query, page, PAGE_SIZE) if brand else Page([], 0, page_number(page), 1, PAGE_SIZE)
    recent = await run_in_threadpool(import_jobs(request).list, principal, 5)
    context = {
        "nav": "catalog",
        "brands": [(name, summaries.get(name)) for name in brand_names],
        "brand": brand,
        "product": product or None,
        "label": label,
        "products": products,
        "images": shown.items,
        "total": shown.total,
        "page": shown.number,
        "pages": shown.pages,
        "page_url": lambda n: catalog_url(brand, product, label=label, page=n),
        "catalog_url": catalog_url,
        "recent_imports": recent,
        "own_brands": brand_names if principal.is_brand else None,
        **await run_in_threadpool(_card_context, core, shown.items),
    }
    return render(request, "catalog.html", context)


@router.get("/catalog/images/{image_id}/thumbnail", response_class=Response)
async def thumbnail(image_id: str, core: CoreDep, state: StateDep, user: UserDep, size: str = "small") -> Response:
    ref = await owned_image(core, user.principal, image_id)
    pixels = THUMBNAIL_SIZES.get(size, THUMBNAIL_SIZES["small"])
    thumbnails = state.thumbnails(core)
    try:
        data = await run_in_threadpool(thumbnails.get, ref.sha256, pixels, partial(core.blobs.get, ref.sha256))
    except (OSError, ImageRejected) as exc:
        raise ConsoleError(404, "This image's file cannot be read.") from exc
    return Response(data, media_type="image/jpeg", headers=IMAGE_HEADERS)


@router.get("/catalog/images/{image_id}/content", response_class=Response)
async def image_content(image_id: str, core: CoreDep, user: UserDep) -> Response:
    ref = await owned_image(core, user.principal, image_id)
    try:
        data = await run_in_threadpool(core.blobs.get, ref.sha256)
    except OSError as exc:
        raise ConsoleError(404, "This image's file cannot be read.") from exc
    return Response(data, media_type=ref.media_type, headers={**IMAGE_HEADERS, "Content-Disposition": "inline"})


@router.post("/catalog/images", response_class=HTMLResponse)
async def upload_images(
    request: Request,
    core: CoreDep,
    user: CsrfUserDep,
    files: Annotated[list[UploadFile] | None, File()] = None,
    brand: Annotated[str, Form(max_length=300)] = "",
    product: Annotated[str, Form(max_length=300)] = "",
    label: Annotated[str, Form(max_length=40)] = "",
    source: Annotated[str, Form(max_length=600)] = "",
) -> Response:
    """Add one or more reference images (the core's add_reference: each searchable when this returns)."""
    principal = user.principal
    brand, product = brand.strip(), product.strip()
    uploads = [f for f in files or [] if f.filename]
    results: list[dict[str, Any]] = []
    error: str | None = None
    status = 200
    if not uploads:
        error, status = "Choose or drop at least one image file.", 422
    elif not brand or not product:
        error, status = "Say which brand and product these images show.", 422
    elif label not in LABELS:
        error, status = "Say whether the images are authentic or known fakes.", 422
    elif not may_manage_brand(principal, brand):
        error, status = f"You may not add images to the catalog of {brand!r}.", 403
    else:
        for upload in uploads:
            name = upload.filename or "image"
            try:
                if (upload.filename or "").lower().endswith(ARCHIVE_SUFFIXES):
                    raise UnsupportedFormat("this is an archive: import it with the archive form")
                photo = await read_upload(upload, core.settings.limits.max_image_bytes)
                added = await run_in_threadpool(
                    partial(
                        core.writer.add_reference, photo, brand, product, label, source.strip() or None, actor=principal.key_id
                    )
                )
                results.append({"name": name, "ref": added.ref, "created": added.created})
            except (RequestRejected, DomainError, ImageRejected) as exc:  # RequestRejected: read_upload's 413
                results.append({"name": name, "error": str(exc), "status": rejection_status(exc)})
        if not any("ref" in r for r in results):
            status = next(int(r["status"]) for r in results)
    context = {
        "results": results,
        "error": error,
        "brand": brand,
        "product": product,
        "catalog_url": catalog_url,
        **await run_in_threadpool(_card_context, core, [r["ref"] for r in results if "ref" in r]),
    }
    template = "_upload_result.html" if is_htmx(request) else "upload_result.html"
    return render(request, template, {"nav": "catalog", **context}, status=status)


@router.post("/catalog/images/{image_id}/delete", response_class=HTMLResponse)
async def delete_image(request: Request, image_id: str, core: CoreDep, user: CsrfUserDep) -> Response:
    ref = await owned_image(core, user.principal, image_id)
    await run_in_threadpool(partial(core.writer.delete_reference, image_id, actor=user.principal.key_id))
    request.app.state.metrics.catalog_changes.labels("delete").inc()
    if is_htmx(request):
        return render(request, "_image_deleted.html", {"ref": ref})
    return redirect(catalog_url(ref.brand, ref.product))


@router.post("/catalog/images/{image_id}/label", response_class=HTMLResponse)
async def relabel_image(
    request: Request, image_id: str, core: CoreDep, user: CsrfUserDep, label: Annotated[str, Form(max_length=40)] = ""
) -> Response:
    ref = await owned_image(core, user.principal, image_id)
    if label not in LABELS:
        raise ConsoleError(422, f"A label is {' or '.join(LABELS)}.")
    try:
        updated = await run_in_threadpool(partial(core.writer.relabel_reference, image_id, label, actor=user.principal.key_id))
    except DomainError as exc:
        raise ConsoleError(rejection_status(exc), str(exc)) from exc
    if updated is None:
        raise ConsoleError(404, "There is no such reference image in your catalog.")
    if is_htmx(request):
        context = {
            "ref": updated,
            "notice": f"Now labelled {label}.",
            **await run_in_threadpool(_card_context, core, [updated]),
        }
        return render(request, "_image_card.html", context)
    return redirect(catalog_url(ref.brand, ref.product))


@router.post("/catalog/imports", response_class=HTMLResponse)
async def import_archive(
    request: Request, core: CoreDep, user: CsrfUserDep, archive: Annotated[UploadFile | None, File()] = None
) -> Response:
    """Start a bulk import job (service/imports/jobs.py) and show its progress."""
    jobs = import_jobs(request)
    if archive is None or not archive.filename:
        raise ConsoleError(422, "Choose or drop a .zip or .tar.gz archive.")
    data = await archive.read()
    try:
        job = await run_in_threadpool(jobs.submit, data, user.principal, archive.filename)
    except DomainError as exc:
        raise ConsoleError(rejection_status(exc), f"{archive.filename}: {exc}") from exc
    if is_htmx(request):
        return render(request, "_import_job.html", {"job": job, "catalog_url": catalog_url}, status=202)
    return redirect(f"{PREFIX}/catalog/imports/{job['job_id']}")


@router.get("/catalog/imports/{job_id}", response_class=HTMLResponse)
async def import_status(request: Request, job_id: str, user: UserDep) -> Response:
    job = await run_in_threadpool(import_jobs(request).get, job_id, user.principal)
    if job is None:
        raise ConsoleError(404, "There is no such import job.")
    context = {"job": job, "catalog_url": catalog_url, "nav": "catalog", "running": job["state"] in RUNNING_STATES}
    return render(request, "_import_job.html" if is_htmx(request) else "import_job.html", context)
