"""GET /v1/audit: the append-only log of catalog changes, key changes, feedback and model activations."""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from service.api.auth import AdminKey
from service.api.deps import CoreDep
from service.api.schemas import AuditLogOut, error_responses

router = APIRouter(prefix="/v1", tags=["audit"])


@router.get("/audit", response_model=AuditLogOut, responses=error_responses(401, 403, 422, 429, 503))
async def audit_log(
    core: CoreDep,
    _: AdminKey,
    actor: Annotated[str | None, Query(max_length=80, description="Key id")] = None,
    action: Annotated[str | None, Query(max_length=60, description="e.g. catalog.add, key.revoke")] = None,
    brand: Annotated[str | None, Query(max_length=200)] = None,
    since: Annotated[datetime | None, Query(description="ISO 8601, inclusive; with an offset or Z, or naive = UTC")] = None,
    until: Annotated[datetime | None, Query(description="ISO 8601, exclusive; with an offset or Z, or naive = UTC")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before_id: Annotated[int | None, Query(ge=1, le=2**63 - 1, description="Page: entries older than this id")] = None,
) -> dict[str, Any]:
    """Newest first. Page backwards with `before_id` = the smallest id of the previous page.

    `since`/`until` compare instants: `2026-12-05T04:32:00+05:00` is `2026-12-04T23:32:00Z`; a time without an offset
    is UTC."""
    entries = await run_in_threadpool(partial(core.audit.query, actor, action, brand, since, until, limit, before_id))
    return {"entries": entries}
