"""App factory: routers, error handlers, and the lifespan that loads the engine off the event loop."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from embeddings import ImageRejected
from service.api.routes import admin, audit, catalog, catalog_imports, health, scan, scans
from service.body_limit import BodyLimitMiddleware
from service.config import Settings
from service.console import CONSOLE_IMPORTS_PATH, mount_console
from service.engine import ScanEngine
from service.errors import RequestRejected, ServiceNotReady
from service.metrics import ServiceMetrics
from service.runtime import ServiceRuntime

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, engine: ScanEngine | None = None) -> FastAPI:
    """Build the app; with no `engine`, the model and index load in the background at start-up."""
    settings = (settings or Settings()).for_serving()
    metrics = ServiceMetrics()
    runtime = ServiceRuntime(settings, engine, metrics)

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
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.request_byte_limit,
        path_limits={
            catalog_imports.IMPORTS_PATH: settings.import_request_byte_limit,
            CONSOLE_IMPORTS_PATH: settings.import_request_byte_limit,
        },
    )
    app.state.runtime = runtime
    app.state.metrics = metrics

    def reject(status: int, detail: object, headers: dict[str, str] | None = None) -> JSONResponse:
        metrics.rejected.labels(str(status)).inc()
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)

    @app.exception_handler(RequestRejected)
    async def _rejected(_: Request, exc: RequestRejected) -> JSONResponse:
        return reject(exc.status, exc.detail, exc.headers)

    @app.exception_handler(ImageRejected)
    async def _image_rejected(_: Request, exc: ImageRejected) -> JSONResponse:
        return reject(exc.status, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
        return reject(422, errors)

    @app.exception_handler(ServiceNotReady)
    async def _not_ready(_: Request, exc: ServiceNotReady) -> JSONResponse:
        return JSONResponse({"detail": f"service not ready: {exc}"}, status_code=503, headers={"Retry-After": "5"})

    for router in (health.router, scan.router, scans.router, catalog.router, admin.router, audit.router):
        app.include_router(router)
    app.include_router(catalog_imports.router)  # bulk catalog import and export
    mount_console(app, settings)  # web console under /console (service/console/)
    return app
