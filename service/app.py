"""App factory: routers, error handlers, and the lifespan that loads the service core off the event loop."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from embeddings import ImageRejected
from service.access.rate_limit import RateLimiter, role_limits
from service.api.body_limit import BodyLimitMiddleware, service_body_bounds
from service.api.errors import RequestRejected, domain_error_status, error_response, validation_detail
from service.api.gate import AccessGate
from service.api.routes import admin, audit, catalog, catalog_imports, health, scan, scans
from service.config import Settings
from service.console import mount_console
from service.console.common import require_user
from service.core import ServiceCore
from service.errors import DomainError, ServiceNotReady
from service.metrics import ServiceMetrics
from service.runtime import ServiceRuntime

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, core: ServiceCore | None = None) -> FastAPI:
    """Build the app; with no `core`, the model and index load in the background at start-up."""
    settings = (settings or Settings()).for_serving()
    metrics = ServiceMetrics()
    runtime = ServiceRuntime(settings, core, metrics)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runtime.start()
        try:
            yield
        finally:
            runtime.stop()

    app = FastAPI(
        title="counterfeit-scan",
        version="0.1.0",
        summary="Counterfeit risk for marketplace listing photos, with the reference images behind each score.",
        lifespan=lifespan,
    )
    # The middleware added last runs first: the access gate (service/api/gate.py: key, rate limit, role; console
    # session) before any body byte is read, then each route's body bound (service/api/body_limit.py) as the body streams in.
    count_413 = metrics.rejected.labels("413").inc
    app.add_middleware(BodyLimitMiddleware, bounds=service_body_bounds(settings), on_refuse=count_413)
    app.add_middleware(AccessGate, limiter=RateLimiter(role_limits(settings)), metrics=metrics, session_guard=require_user)
    app.state.runtime = runtime
    app.state.metrics = metrics

    # Every error is service/api/errors.py's one shape (ErrorOut in the OpenAPI document): {"detail": str[, "errors"]}.
    def reject(
        status: int, detail: str, headers: dict[str, str] | None = None, errors: list[dict[str, Any]] | None = None
    ) -> JSONResponse:
        metrics.rejected.labels(str(status)).inc()
        return error_response(status, detail, headers, errors)

    @app.exception_handler(RequestRejected)
    async def _rejected(_: Request, exc: RequestRejected) -> JSONResponse:
        return reject(exc.status, exc.detail, exc.headers)

    @app.exception_handler(DomainError)
    async def _domain_error(_: Request, exc: DomainError) -> JSONResponse:
        status, headers = domain_error_status(exc)
        return reject(status, str(exc), headers)

    @app.exception_handler(ImageRejected)
    async def _image_rejected(_: Request, exc: ImageRejected) -> JSONResponse:
        return reject(exc.status, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
        return reject(422, validation_detail(errors), errors=errors)

    @app.exception_handler(ServiceNotReady)
    async def _not_ready(_: Request, exc: ServiceNotReady) -> JSONResponse:
        return error_response(503, f"service not ready: {exc}", {"Retry-After": "5"})

    for router in (health.router, scan.router, scans.router, catalog.router, admin.router, audit.router):
        app.include_router(router)
    app.include_router(catalog_imports.router)  # bulk catalog import and export
    mount_console(app, settings)  # web console under /console (service/console/)
    return app
