"""Sign-in with an API key (form POST), sign-out. The session lives in an HTTP-only, SameSite=Strict cookie."""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from service.access.api_keys import LOCAL_ADMIN
from service.access.policy import may
from service.console.common import (
    PREFIX,
    SESSION_COOKIE,
    SIGN_IN_COOKIE,
    CoreDep,
    CsrfUserDep,
    StateDep,
    current_user,
    redirect,
    render,
    safe_next,
    same_origin,
)

router = APIRouter(prefix=PREFIX, include_in_schema=False)

SIGN_IN_TOKEN_MAX_AGE_S = 3600


def _loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _sign_in_page(request: Request, state: StateDep, next_url: str, error: str | None = None, status: int = 200) -> Response:
    """The form, with a fresh double-submit token in a cookie and a hidden field (sign-in CSRF)."""
    token = secrets.token_urlsafe(24)
    settings = state.settings
    insecure_transport = (
        settings.console.cookie_secure and request.url.scheme == "http" and not _loopback(request.url.hostname or "")
    )
    notice = "You are signed out." if request.query_params.get("signed_out") else None
    response = render(
        request,
        "sign_in.html",
        {"sign_in_token": token, "next": next_url, "error": error, "notice": notice, "insecure_transport": insecure_transport},
        status=status,
    )
    response.set_cookie(
        SIGN_IN_COOKIE, token, max_age=SIGN_IN_TOKEN_MAX_AGE_S, path=PREFIX, secure=settings.console.cookie_secure,
        httponly=True, samesite="strict",
    )  # fmt: skip
    return response


@router.get("", response_class=RedirectResponse)
@router.get("/", response_class=RedirectResponse)
async def console_home(request: Request) -> Response:
    return redirect(f"{PREFIX}/review")


@router.get("/sign-in", response_class=HTMLResponse)
async def sign_in_form(request: Request, state: StateDep, next: str | None = None) -> Response:
    if await current_user(request) is not None:
        return redirect(safe_next(next))
    return _sign_in_page(request, state, safe_next(next))


@router.post("/sign-in", response_class=HTMLResponse)
async def sign_in(
    request: Request,
    state: StateDep,
    core: CoreDep,
    api_key: Annotated[str, Form(max_length=300)] = "",
    csrf_token: Annotated[str, Form(max_length=100)] = "",
    next: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    next_url = safe_next(next)
    expected = request.cookies.get(SIGN_IN_COOKIE, "")
    if not expected or not hmac.compare_digest(expected.encode(), csrf_token.encode()) or not same_origin(request):
        return _sign_in_page(request, state, next_url, "This sign-in form had expired. Please try again.", 403)
    settings = state.settings
    if settings.access.auth_disabled:
        key_id = LOCAL_ADMIN.key_id
    else:
        principal = await run_in_threadpool(core.keys.authenticate, api_key.strip())
        if principal is None:
            return _sign_in_page(request, state, next_url, "That API key is unknown or has been revoked.", 401)
        if not may(principal, "console"):
            message = (
                f"A {principal.role} key cannot sign in to the console: it is meant for scanning pipelines. "
                "Use an admin key or a brand key."
            )
            return _sign_in_page(request, state, next_url, message, 403)
        key_id = principal.key_id
    token = await run_in_threadpool(state.sessions(core).create, key_id)
    response = redirect(next_url)
    response.set_cookie(
        SESSION_COOKIE, token, max_age=settings.console.session_ttl_s, path=PREFIX, secure=settings.console.cookie_secure,
        httponly=True, samesite="strict",
    )  # fmt: skip
    response.delete_cookie(SIGN_IN_COOKIE, path=PREFIX, secure=settings.console.cookie_secure, httponly=True, samesite="strict")
    return response


@router.post("/sign-out", response_class=RedirectResponse)
async def sign_out(request: Request, state: StateDep, core: CoreDep, _user: CsrfUserDep) -> Response:
    token = request.cookies.get(SESSION_COOKIE, "")
    await run_in_threadpool(state.sessions(core).end, token)
    response = redirect(f"{PREFIX}/sign-in?signed_out=1")
    response.headers["Clear-Site-Data"] = '"cache"'  # images this user viewed leave the browser's cache with them
    response.delete_cookie(
        SESSION_COOKIE, path=PREFIX, secure=state.settings.console.cookie_secure, httponly=True, samesite="strict"
    )
    return response
