"""What every console page shares: state on the app, the signed-in user, CSRF checks, rendering and errors."""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Generic, TypeVar
from urllib.parse import quote, urlsplit

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from service.config import Settings
from service.console.sessions import SessionStore, SignedIn
from service.console.thumbnails import Thumbnails
from service.core import ServiceCore
from service.errors import ServiceNotReady
from service.imports.jobs import ImportJobs
from service.runtime import ServiceRuntime

PACKAGE_DIR = Path(__file__).resolve().parent
PREFIX = "/console"
SESSION_COOKIE = "cs_console"
SIGN_IN_COOKIE = "cs_console_signin"  # double-submit token of the sign-in form, before there is a session
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
# Images may be cached by the browser, but only for the session that fetched them: another user signing in on the
# same browser must not be served them from its cache (Vary: Cookie; sign-out also clears the cache).
IMAGE_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=600", "Vary": "Cookie"}

T = TypeVar("T")


class ConsoleError(Exception):
    """An error page (or, for htmx requests, an error fragment) with the HTTP status that fits."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class SignInRequired(Exception):
    pass


class ConsoleState:
    """Held on `app.state.console`: templates, and the session store and thumbnail cache of the serving core."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.templates = Jinja2Templates(directory=PACKAGE_DIR / "templates")
        self.templates.env.globals["PREFIX"] = PREFIX
        self.templates.env.filters["pct"] = lambda value, digits=0: f"{100 * float(value):.{digits}f}%"
        self._lock = threading.Lock()
        self._stores: dict[int, tuple[ServiceCore, SessionStore, Thumbnails]] = {}

    def _for(self, core: ServiceCore) -> tuple[ServiceCore, SessionStore, Thumbnails]:
        with self._lock:
            entry = self._stores.get(id(core))
            if entry is None or entry[0] is not core:
                sessions = SessionStore(core.database, self.settings.console.session_ttl_s, self.settings.access.auth_disabled)
                thumbnails = Thumbnails(self.settings.storage.data_dir / "console_thumbnails", self.settings.image_limits())
                core.writer.blob_deleted.append(thumbnails.discard)
                entry = self._stores[id(core)] = (core, sessions, thumbnails)
            return entry

    def sessions(self, core: ServiceCore) -> SessionStore:
        return self._for(core)[1]

    def thumbnails(self, core: ServiceCore) -> Thumbnails:
        return self._for(core)[2]


def console_state(request: Request) -> ConsoleState:
    state: ConsoleState = request.app.state.console
    return state


def get_core(request: Request) -> ServiceCore:
    runtime: ServiceRuntime = request.app.state.runtime
    try:
        return runtime.require_core()
    except ServiceNotReady as exc:
        raise ConsoleError(503, f"The service is not ready yet ({exc}). Try again in a moment.") from exc


def import_jobs(request: Request) -> ImportJobs:
    """The runtime's bulk import jobs (service/imports/jobs.py)."""
    runtime: ServiceRuntime = request.app.state.runtime
    return runtime.imports


async def current_user(request: Request) -> SignedIn | None:
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    core = get_core(request)
    return await run_in_threadpool(console_state(request).sessions(core).resolve, token)


async def require_user(request: Request) -> SignedIn:
    user = await current_user(request)
    if user is None:
        raise SignInRequired
    request.state.console_user = user
    return user


def same_origin(request: Request) -> bool:
    """A browser's Origin (or Referer) header, when sent, must name this host."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host", "")


async def require_csrf(request: Request, user: Annotated[SignedIn, Depends(require_user)]) -> SignedIn:
    """POSTs carry the session's CSRF token (form field or htmx header) and come from this origin."""
    sent = request.headers.get(CSRF_HEADER)
    if not sent:
        form = await request.form()
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    if not sent or not hmac.compare_digest(sent.encode(), user.csrf_token.encode()) or not same_origin(request):
        raise ConsoleError(403, "This form is out of date or did not come from the console (CSRF check). Reload the page.")
    return user


CoreDep = Annotated[ServiceCore, Depends(get_core)]
UserDep = Annotated[SignedIn, Depends(require_user)]
CsrfUserDep = Annotated[SignedIn, Depends(require_csrf)]
StateDep = Annotated[ConsoleState, Depends(console_state)]


MAX_PAGE = 1_000_000  # keeps page offsets far inside SQL's 64-bit integers; past the last page shows the last page


def page_number(value: str | None) -> int:
    """A `page` query parameter: 1 when missing or not a whole number, else clamped to 1..MAX_PAGE (pages then clamp
    it to their last page). Never an error: a page number is a link, not a field to correct."""
    try:
        number = int(value) if value else 1
    except ValueError:
        return 1
    return min(max(number, 1), MAX_PAGE)


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list paged in SQL: its rows, how many match in all, its number (from 1) and the number of pages."""

    items: list[T]
    total: int
    number: int
    pages: int
    size: int

    @property
    def first(self) -> int:
        """The position (from 1) of the page's first row in the whole list."""
        return (self.number - 1) * self.size + 1


async def page_of(query: Callable[[int], tuple[list[T], int]], requested: str | None, size: int) -> Page[T]:
    """The page `requested` (a `page` query parameter, see `page_number`) of `query(offset)`, which returns one page of
    `size` rows from `offset` and the total; past the last page, the last page. `query` runs on a worker thread."""
    number = page_number(requested)
    items, total = await run_in_threadpool(query, (number - 1) * size)
    pages = max(1, -(-total // size))
    if number > pages:  # past the end: the last page
        number = pages
        items, total = await run_in_threadpool(query, (number - 1) * size)
    return Page(items, total, number, pages, size)


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def render(
    request: Request,
    template: str,
    context: Mapping[str, Any] | None = None,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    state = console_state(request)
    user: SignedIn | None = getattr(request.state, "console_user", None)
    runtime: ServiceRuntime = request.app.state.runtime
    core = runtime.core
    full = {
        "request": request,
        "user": user,
        "csrf_token": user.csrf_token if user else "",
        "random_weights": bool(core is not None and core.model.embedder.info.random_weights),
        "auth_disabled": state.settings.access.auth_disabled,
        **(context or {}),
    }
    response = state.templates.TemplateResponse(request, template, full, status_code=status)
    response.headers.update({**PAGE_HEADERS, **(headers or {})})
    return response


def redirect(url: str, request: Request | None = None) -> Response:
    """303 to `url`; for htmx requests an HX-Redirect, which htmx follows with a full page load."""
    if request is not None and is_htmx(request):
        return Response(status_code=204, headers={"HX-Redirect": url, **PAGE_HEADERS})
    return RedirectResponse(url, status_code=303, headers=PAGE_HEADERS)


def sign_in_url(request: Request) -> str:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return f"{PREFIX}/sign-in?next={quote(target, safe='')}"


def safe_next(value: str | None) -> str:
    """Only console paths may be redirected to after sign-in (no open redirect)."""
    if value and value.startswith(PREFIX + "/") and not value.startswith("//") and "\\" not in value:
        return value
    return f"{PREFIX}/review"
