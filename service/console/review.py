"""Review queue (flagged scans of the user's brands), a scan's evidence page, reviewer feedback, and the dashboard."""

from __future__ import annotations

import io
from functools import partial
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response
from PIL import Image
from starlette.concurrency import run_in_threadpool

from embeddings import ImageRejected
from service.access.api_keys import Principal
from service.access.policy import brand_choices, feedback_brands, may, narrowed_brands, redact_scan, visible, visible_brands
from service.access.reads import readable_feedback
from service.access.reads import readable_scan as read_scan
from service.api.errors import rejection_status
from service.console.common import (
    IMAGE_HEADERS,
    PREFIX,
    ConsoleError,
    CoreDep,
    CsrfUserDep,
    StateDep,
    UserDep,
    is_htmx,
    page_of,
    redirect,
    render,
)
from service.console.queries import (
    REVIEWER_VERDICTS,
    dashboard,
    existing_images,
    latest_feedback,
    queue_scans,
    scan_summary,
)
from service.console.thumbnails import THUMBNAIL_SIZES
from service.core import ServiceCore
from service.errors import DomainError, NotFound
from service.scanning.brand_views import view_scoring
from service.scanning.result import FLAGGED, ScanResult

router = APIRouter(prefix=PREFIX, include_in_schema=False)

PAGE_SIZE = 25
DASHBOARD_DAYS = (7, 30, 90)
MAX_NOTE = 2000


def _float(value: str | None) -> float | None:
    try:
        number = float(value) if value not in (None, "") else None
    except ValueError:
        return None
    return None if number is None or not 0 <= number <= 1 else number


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value else default
    except ValueError:
        return default


@router.get("/review", response_class=HTMLResponse)
async def review_queue(
    request: Request,
    core: CoreDep,
    user: UserDep,
    verdict: str | None = None,
    brand: str | None = None,
    product: str | None = None,
    min_risk: str | None = None,
    reviewed: str | None = None,
    page: str | None = None,
) -> Response:
    """Scans answered likely_counterfeit or needs_review that concern the user's brands, newest first."""
    principal = user.principal
    verdicts = [verdict] if verdict in FLAGGED else list(FLAGGED)
    brands = narrowed_brands(principal, brand)
    risk_floor = _float(min_risk)
    review_state = {"yes": True, "no": False}.get(reviewed or "")
    # "reviewed": by the reviewers of the brands shown (a brand's queue counts its own reviews of a shared scan)
    query = partial(queue_scans, core, verdicts, brands, product or None, risk_floor, review_state, PAGE_SIZE)
    shown = await page_of(query, page, PAGE_SIZE)
    summaries = [
        scan_summary(redact_scan(principal, row, view_scoring(core.model, row) if principal.is_brand else None))
        for row in shown.items
    ]
    reviews = await run_in_threadpool(latest_feedback, core, [s["scan_id"] for s in summaries], brands)
    catalog_products = visible(principal, await run_in_threadpool(core.catalog.list_products), lambda p: p.brand)
    filters = {"verdict": verdict if verdict in FLAGGED else "", "brand": brand or "", "product": product or "",
               "min_risk": "" if risk_floor is None else f"{risk_floor:g}",
               "reviewed": "" if review_state is None else reviewed or ""}  # fmt: skip

    def page_url(n: int) -> str:
        return f"{PREFIX}/review?" + urlencode({**{k: v for k, v in filters.items() if v}, "page": n})

    context = {
        "nav": "review",
        "scans": summaries,
        "reviews": reviews,
        "total": shown.total,
        "page": shown.number,
        "pages": shown.pages,
        "page_url": page_url,
        "filters": filters,
        "bad_risk": bool(min_risk) and risk_floor is None,
        "brand_choices": brand_choices(principal, (p.brand for p in catalog_products)),
        "product_choices": sorted({p.name for p in catalog_products if not brand or p.brand == brand}),
        "first": shown.first,
    }
    return render(request, "review.html", context)


async def readable_scan(core: ServiceCore, principal: Principal, scan_id: str) -> ScanResult:
    """The stored scan, as this user may see it; another brand's scan is a 404, like one that does not exist."""
    try:
        return await run_in_threadpool(read_scan, core, principal, scan_id)
    except NotFound as exc:
        raise ConsoleError(404, "There is no such scan among your brands' scans.") from exc


async def _scan_context(core: ServiceCore, principal: Principal, scan_id: str) -> dict[str, Any]:
    record = await readable_scan(core, principal, scan_id)
    feedback = await run_in_threadpool(readable_feedback, core, principal, scan_id)
    ids = [m.image_id for image in record.images for m in image.matches]
    ids += [d.image_id for image in record.images for d in image.near_duplicates]
    ids += [i for f in feedback for i in f["added_image_ids"]]
    existing = await run_in_threadpool(existing_images, core, ids)
    kept = [record.photos_kept and core.scan_photos.path(image.sha256).is_file() for image in record.images]
    return {
        "scan": record,
        "summary": scan_summary(record),
        "feedback": feedback,
        "existing": existing,
        "kept": kept,
        "may_review": may(principal, "feedback"),
        "reviewer_verdicts": REVIEWER_VERDICTS,
    }


@router.get("/scans/{scan_id}", response_class=HTMLResponse)
async def scan_page(request: Request, scan_id: str, core: CoreDep, user: UserDep) -> Response:
    context = await _scan_context(core, user.principal, scan_id)
    return render(request, "scan.html", {"nav": "review", **context})


@router.get("/scans/{scan_id}/photos/{number}", response_class=Response)
async def scan_photo(scan_id: str, number: int, core: CoreDep, state: StateDep, user: UserDep, size: str = "large") -> Response:
    """A listing photo of a scan (kept for flagged scans, see keep_scan_photos), downscaled unless size=full."""
    record = await readable_scan(core, user.principal, scan_id)
    if not 1 <= number <= len(record.images) or not record.photos_kept:
        raise ConsoleError(404, "This scan's photo was not kept.")
    sha = record.images[number - 1].sha256
    try:
        if size == "full":
            data = await run_in_threadpool(core.scan_photos.get, sha)
            with Image.open(io.BytesIO(data)) as image:
                media_type = Image.MIME.get(image.format or "", "application/octet-stream")
            return Response(data, media_type=media_type, headers=IMAGE_HEADERS)
        pixels = THUMBNAIL_SIZES.get(size, THUMBNAIL_SIZES["large"])
        data = await run_in_threadpool(state.thumbnails(core).get, sha, pixels, partial(core.scan_photos.get, sha))
    except (OSError, ImageRejected) as exc:
        raise ConsoleError(404, "This scan's photo was not kept.") from exc
    return Response(data, media_type="image/jpeg", headers=IMAGE_HEADERS)


@router.post("/scans/{scan_id}/feedback", response_class=HTMLResponse)
async def give_feedback(
    request: Request,
    scan_id: str,
    core: CoreDep,
    user: CsrfUserDep,
    verdict: Annotated[str, Form(max_length=40)] = "",
    note: Annotated[str, Form(max_length=MAX_NOTE + 100)] = "",
    brand: Annotated[str, Form(max_length=300)] = "",
    product: Annotated[str, Form(max_length=300)] = "",
) -> Response:
    """Record a reviewer's verdict exactly as POST /v1/scans/{id}/feedback does (a confirmed fake joins the catalog)."""
    principal = user.principal
    await readable_scan(core, principal, scan_id)
    error: str | None = None
    status = 201
    recorded: dict[str, Any] | None = None
    if verdict not in REVIEWER_VERDICTS:
        error, status = "Choose confirm counterfeit, confirm authentic or not applicable.", 422
    elif len(note) > MAX_NOTE or len(brand.strip()) > 200 or len(product.strip()) > 200:
        error, status = f"The note takes at most {MAX_NOTE} characters, brand and product 200.", 422
    else:
        allowed = feedback_brands(principal)
        try:
            recorded = await run_in_threadpool(
                partial(core.review.give_feedback, scan_id, verdict, note.strip() or None, brand.strip() or None,
                        product.strip() or None, actor=principal.key_id, allowed_brands=allowed)
            )  # fmt: skip
            request.app.state.metrics.feedback.labels(verdict).inc()
        except DomainError as exc:
            error, status = str(exc), rejection_status(exc)
    if not is_htmx(request):
        if error is not None:
            raise ConsoleError(status, error)
        return redirect(f"{PREFIX}/scans/{scan_id}")
    context = await _scan_context(core, principal, scan_id)
    return render(request, "_feedback.html", {**context, "error": error, "recorded": recorded}, status=status)


def _dashboard_url(current: dict[str, Any], **change: Any) -> str:
    query = {k: v for k, v in {**current, **change}.items() if v}
    return f"{PREFIX}/dashboard?{urlencode(query)}"


@router.get("/dashboard", response_class=HTMLResponse)
async def dashboard_page(
    request: Request, core: CoreDep, user: UserDep, days: str | None = None, brand: str | None = None
) -> Response:
    principal = user.principal
    span = _int(days, 30)
    span = span if span in DASHBOARD_DAYS else 30
    choices = brand_choices(principal, (b.name for b in await run_in_threadpool(core.catalog.list_brands)))
    brand = brand if brand in choices else None
    figures = await run_in_threadpool(dashboard, core, frozenset({brand}) if brand else visible_brands(principal), span)
    model = core.model
    thresholds = model.calibrator.summary() if model.calibrator is not None else None
    context = {
        "nav": "dashboard",
        "figures": figures,
        "days": span,
        "day_choices": DASHBOARD_DAYS,
        "brand": brand,
        "brand_choices": choices,
        "dashboard_url": partial(_dashboard_url, {"days": span, "brand": brand}),
        "calibration": thresholds,
        "scoring": model.scoring,
    }
    return render(request, "dashboard.html", context)
