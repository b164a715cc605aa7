"""Reference catalog: add, list, fetch and delete reference images. Brand keys see and change their brands only."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Response, UploadFile
from starlette.concurrency import run_in_threadpool

from service.access.policy import check_catalog_write, visible, visible_brands
from service.access.reads import readable_image
from service.api.auth import CatalogKey
from service.api.deps import CoreDep, MetricsDep, read_upload
from service.api.schemas import (
    AddedImageOut,
    BrandsOut,
    DeletedImageOut,
    ImagesOut,
    Label,
    ProductsOut,
    ReferenceImageOut,
    RelabeledImageOut,
    RelabelIn,
    error_responses,
)
from service.errors import NotFound

router = APIRouter(prefix="/v1/catalog", tags=["catalog"])

DUPLICATE_UPLOAD = {"model": AddedImageOut, "description": "The same bytes were already there with this label: the original"}
IMAGE_BYTES = {
    "content": {media: {"schema": {"type": "string", "format": "binary"}} for media in ("image/jpeg", "image/png", "image/webp")},
    "description": "The image's bytes, as uploaded",
}


@router.post(
    "/images",
    status_code=201,
    response_model=AddedImageOut,
    responses={200: DUPLICATE_UPLOAD, **error_responses(400, 401, 403, 409, 413, 415, 422, 429, 503)},
)
async def add_image(
    core: CoreDep,
    metrics: MetricsDep,
    principal: CatalogKey,
    response: Response,
    file: Annotated[UploadFile, File(description="Reference photo (JPEG, PNG or WebP)")],
    brand: Annotated[str, Form(min_length=1, max_length=200)],
    product: Annotated[str, Form(min_length=1, max_length=200)],
    label: Annotated[Label, Form(description="authentic or counterfeit")],
    source: Annotated[str | None, Form(max_length=500)] = None,
) -> dict[str, Any]:
    """Add a reference image; it is searchable when this returns. A repeat upload answers 200 with the original."""
    check_catalog_write(principal, brand.strip())
    photo = await read_upload(file, core.settings.limits.max_image_bytes)
    added = await run_in_threadpool(
        partial(core.writer.add_reference, photo, brand, product, label, source, actor=principal.key_id)
    )
    if not added.created:
        response.status_code = 200
    metrics.catalog_changes.labels("add" if added.created else "duplicate").inc()
    return {**added.ref.as_dict(), "duplicate": not added.created, "index_version": added.index_version}


@router.get("/images", response_model=ImagesOut, responses=error_responses(401, 403, 422, 429, 503))
async def list_images(
    core: CoreDep,
    principal: CatalogKey,
    brand: str | None = None,
    product: str | None = None,
    label: Label | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    """The reference images this key may see, oldest first, narrowed to a brand, product and label; one page of them
    (paged in SQL) and how many match in all."""
    query = partial(core.catalog.image_page, visible_brands(principal), brand, product, label, limit, offset)
    refs, total = await run_in_threadpool(query)
    return {"images": [ref.as_dict() for ref in refs], "total": total}


@router.get("/images/{image_id}", response_model=ReferenceImageOut, responses=error_responses(401, 403, 404, 422, 429, 503))
async def get_image(image_id: str, core: CoreDep, principal: CatalogKey) -> dict[str, Any]:
    return (await run_in_threadpool(readable_image, core, principal, image_id)).as_dict()


@router.get(
    "/images/{image_id}/content",
    response_class=Response,
    responses={200: IMAGE_BYTES, **error_responses(401, 403, 404, 422, 429, 503)},
)
async def get_image_content(image_id: str, core: CoreDep, principal: CatalogKey) -> Response:
    ref = await run_in_threadpool(readable_image, core, principal, image_id)
    data = await run_in_threadpool(core.blobs.get, ref.sha256)
    return Response(data, media_type=ref.media_type)


@router.patch(
    "/images/{image_id}", response_model=RelabeledImageOut, responses=error_responses(400, 401, 403, 404, 413, 422, 429, 503)
)
async def relabel_image(
    image_id: str, body: RelabelIn, core: CoreDep, metrics: MetricsDep, principal: CatalogKey
) -> dict[str, Any]:
    """Change a reference image's label (authentic or counterfeit); scans use the new label at once."""
    await run_in_threadpool(readable_image, core, principal, image_id)
    ref = await run_in_threadpool(partial(core.writer.relabel_reference, image_id, body.label, actor=principal.key_id))
    if ref is None:
        raise NotFound(f"no reference image {image_id!r}")
    metrics.catalog_changes.labels("relabel").inc()
    return {**ref.as_dict(), "index_version": core.model.index.version}


@router.delete("/images/{image_id}", response_model=DeletedImageOut, responses=error_responses(401, 403, 404, 422, 429, 503))
async def delete_image(image_id: str, core: CoreDep, metrics: MetricsDep, principal: CatalogKey) -> dict[str, Any]:
    """Remove a reference image from the catalog and the index."""
    await run_in_threadpool(readable_image, core, principal, image_id)
    ref = await run_in_threadpool(partial(core.writer.delete_reference, image_id, actor=principal.key_id))
    if ref is None:
        raise NotFound(f"no reference image {image_id!r}")
    metrics.catalog_changes.labels("delete").inc()
    return {"deleted": ref.image_id, "index_version": core.model.index.version}


@router.get("/brands", response_model=BrandsOut, responses=error_responses(401, 403, 429, 503))
async def list_brands(core: CoreDep, principal: CatalogKey) -> dict[str, Any]:
    shown = visible(principal, await run_in_threadpool(core.catalog.list_brands), lambda b: b.name)
    return {"brands": [{"name": b.name, "products": b.products, "images": b.images} for b in shown]}


@router.get("/products", response_model=ProductsOut, responses=error_responses(401, 403, 422, 429, 503))
async def list_products(core: CoreDep, principal: CatalogKey, brand: str | None = None) -> dict[str, Any]:
    products = await run_in_threadpool(core.catalog.list_products, brand)
    return {
        "products": [
            {"brand": p.brand, "name": p.name, "authentic": p.authentic, "counterfeit": p.counterfeit}
            for p in visible(principal, products, lambda p: p.brand)
        ]
    }
