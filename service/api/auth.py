"""Who is calling, and what their role lets them do. Keys come as `Authorization: Bearer <key>` or `X-API-Key`."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from service.api_keys import LOCAL_ADMIN, Principal
from service.errors import RequestRejected

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="counterfeit-scan"'}


async def get_principal(request: Request) -> Principal:
    # async like the other scan-path dependencies (see service/api/deps.py)
    runtime = request.app.state.runtime
    if runtime.settings.auth_disabled:
        return LOCAL_ADMIN
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    token = credentials.strip() if scheme.lower() == "bearer" else request.headers.get("x-api-key", "").strip()
    if not token:
        raise RequestRejected("an API key is required: send 'Authorization: Bearer <key>'", 401, CHALLENGE)
    keys = runtime.require_engine().keys
    principal: Principal | None = keys.cached(token) or await run_in_threadpool(keys.authenticate, token)
    if principal is None:
        raise RequestRejected("the API key is unknown or revoked", 401, CHALLENGE)
    return principal


def require(*roles: str) -> Callable[[Principal], Coroutine[Any, Any, Principal]]:
    async def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if principal.role not in roles:
            raise RequestRejected(f"a {principal.role} key may not do this (needs {' or '.join(roles)})", 403)
        return principal

    return check


AnyKey = Annotated[Principal, Depends(get_principal)]
AdminKey = Annotated[Principal, Depends(require("admin"))]
CatalogKey = Annotated[Principal, Depends(require("admin", "brand"))]
ScanKey = Annotated[Principal, Depends(require("admin", "scanner", "brand"))]
ReviewKey = Annotated[Principal, Depends(require("admin", "brand"))]


def scan_scope(principal: Principal, brand: str | None) -> str | None:
    """Brand keys scan within their own brands only: the requested one, or their only one."""
    if not principal.is_brand:
        return brand
    if brand is None:
        if len(principal.brands) != 1:
            raise RequestRejected("this key covers several brands: say which one with 'brand'", 422)
        return next(iter(principal.brands))
    if brand not in principal.brands:
        raise RequestRejected(f"this key may not scan against {brand!r}", 403)
    return brand


def redact_scan(principal: Principal, result: dict[str, Any]) -> dict[str, Any]:
    """What a caller may see of a scan: brand keys see evidence from their own brands only."""
    if not principal.is_brand:
        return result
    mine = principal.brands
    images: list[dict[str, Any]] = []
    allowed: set[str] = set()
    for image in result["images"]:
        matches = [m for m in image["matches"] if m["brand"] in mine]
        duplicates = [d for d in image["near_duplicates"] if d["brand"] in mine]
        allowed.update(m["image_id"] for m in matches)
        allowed.update(d["image_id"] for d in duplicates)
        images.append({**image, "matches": matches, "near_duplicates": duplicates})
    # Another brand's authenticity head says what that brand's catalog holds: its opinion goes with its evidence.
    hidden = {int(r["photo"]) for r in result["reasons"] if r["code"] == "authenticity_head" and r.get("brand") not in mine}
    for number in hidden:
        images[number - 1] = {**images[number - 1], "head_probability": None}
    reasons = [
        r
        for r in result["reasons"]
        if ("image_id" not in r or r["image_id"] in allowed) and not (r["code"] == "authenticity_head" and r["photo"] in hidden)
    ]
    return {**result, "images": images, "reasons": reasons}


def may_read_scan(principal: Principal, created_by: str, brands: list[str]) -> bool:
    if principal.role == "admin":
        return True
    if principal.role == "scanner":
        return created_by == principal.key_id
    return bool(principal.brands.intersection(brands))
