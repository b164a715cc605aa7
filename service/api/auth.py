"""Who is calling, and dependencies that let a route's role check run before the route. Keys come as
`Authorization: Bearer <key>` or `X-API-Key`; what a key may do is service/access/policy.py's."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from service.access.api_keys import LOCAL_ADMIN, Principal
from service.access.policy import Action, require_role, roles_for
from service.api.errors import RequestRejected

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
    if runtime.settings.access.auth_disabled:
        return LOCAL_ADMIN
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    token = credentials.strip() if scheme.lower() == "bearer" else request.headers.get("x-api-key", "").strip()
    if not token:
        raise RequestRejected("an API key is required: send 'Authorization: Bearer <key>'", 401, CHALLENGE)
    keys = runtime.require_core().keys
    principal: Principal | None = keys.cached(token) or await run_in_threadpool(keys.authenticate, token)
    if principal is None:
        raise RequestRejected("the API key is unknown or revoked", 401, CHALLENGE)
    return principal


def require(action: Action) -> Callable[[Principal], Coroutine[Any, Any, Principal]]:
    """A dependency: the caller's key, when its role may do `action` (the policy's table, service/access/policy.py)."""

    async def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        require_role(principal, action)
        return principal

    ROLE_CHECKS[check] = roles_for(action)  # the access gate finds a route's role check among its dependencies
    return check


ROLE_CHECKS: dict[Callable[..., Any], tuple[str, ...]] = {}


AnyKey = Annotated[Principal, Depends(get_principal)]  # any key: what it may read, the routes ask the policy
AdminKey = Annotated[Principal, Depends(require("admin"))]
CatalogKey = Annotated[Principal, Depends(require("catalog"))]
ScanKey = Annotated[Principal, Depends(require("scan"))]
ReviewKey = Annotated[Principal, Depends(require("feedback"))]
