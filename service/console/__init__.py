"""The web console under /console: server-rendered Jinja2 pages, htmx for the interactive parts, no JavaScript build.

Brand-protection teams sign in with an API key (admin or brand; scanner keys are for pipelines and get no console),
manage their brands' reference catalog, review flagged scans and see how often reviewers agree with the service.
Everything a page shows is decided by the same access policy as the HTTP API (service/access/policy.py).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles

from service.config import Settings
from service.console import auth, catalog, review
from service.console.common import (
    PACKAGE_DIR,
    PAGE_HEADERS,
    PREFIX,
    ConsoleError,
    ConsoleState,
    SignInRequired,
    is_htmx,
    redirect,
    render,
    sign_in_url,
)
from service.runtime import ServiceRuntime

CONSOLE_IMPORTS_PATH = f"{PREFIX}/catalog/imports"  # archive uploads: the bigger body bound of bulk imports (app.py)


def mount_console(app: FastAPI, settings: Settings) -> None:
    """Serve the console on `app` (unless console_enabled is off): pages, static files, and their error pages."""
    if not settings.console.enabled:
        return
    app.state.console = state = ConsoleState(settings)
    # Thumbnails follow deletions made through this service (API, console) from the core's first moment on,
    # not only once someone has opened the console in this process.
    runtime: ServiceRuntime = app.state.runtime
    runtime.on_core.append(state.thumbnails)
    for router in (auth.router, catalog.router, review.router):
        app.include_router(router)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=PACKAGE_DIR / "static"), name="console-static")

    @app.exception_handler(ConsoleError)
    async def _console_error(request: Request, exc: ConsoleError) -> Response:
        template = "_alert.html" if is_htmx(request) else "error.html"
        return render(request, template, {"status": exc.status, "message": exc.message}, status=exc.status)

    @app.exception_handler(SignInRequired)
    async def _sign_in_required(request: Request, _: SignInRequired) -> Response:
        if request.method == "GET" and not is_htmx(request):
            return redirect(sign_in_url(request))
        if is_htmx(request):  # htmx loads the sign-in page in full
            return Response(status_code=401, headers={"HX-Redirect": f"{PREFIX}/sign-in", **PAGE_HEADERS})
        message = "You are not signed in, or your session has ended. Please sign in again."
        return render(request, "error.html", {"status": 401, "message": message, "sign_in": True}, status=401)
