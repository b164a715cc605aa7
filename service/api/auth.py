"""Who is calling, and what their role lets them do. Keys come as `Authorization: Bearer <key>` or `X-API-Key`."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from service.access.api_keys import LOCAL_ADMIN, Principal
from service.api.errors import RequestRejected
from service.scanning.brand_views import ViewScoring, brand_view

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="counterfeit-scan"'}
PRINCIPAL_STATE = "api_principal"  # request.state attribute: the key already checked for this request


async def get_principal(request: Request) -> Principal:
    """The caller's key. The access gate (service/api/gate.py) calls this before the body is read and keeps the answer
    on the request's state, so that the route's own dependency does not check the key a second time."""
    # async like the other scan-path dependencies (see service/api/deps.py)
    known: Principal | None = getattr(request.state, PRINCIPAL_STATE, None)
    if known is not None:
        return known
    principal = await _authenticate(request)
    setattr(request.state, PRINCIPAL_STATE, principal)
    return principal


async def _authenticate(request: Request) -> Principal:
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

    ROLE_CHECKS[check] = roles  # the access gate finds a route's role check among its dependencies
    return check


ROLE_CHECKS: dict[Callable[..., Any], tuple[str, ...]] = {}


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


def redact_scan(principal: Principal, result: dict[str, Any], view: ViewScoring | None = None) -> dict[str, Any]:
    """What a caller may see of a scan: brand keys see their brands' view of it (`service.scanning.brand_views`)."""
    return brand_view(result, principal.brands, view) if principal.is_brand else result


def may_read_scan(principal: Principal, created_by: str, brands: list[str]) -> bool:
    if principal.role == "admin":
        return True
    if principal.role == "scanner":
        return created_by == principal.key_id
    return bool(principal.brands.intersection(brands))
