"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.auth import AnyKey
from service.api.deps import MetricsDep, RuntimeDep
from service.api.schemas import HealthOut, NotReadyOut, ReadyOut, error_responses

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthOut)
def healthz() -> dict[str, str]:
    """The process is up and answering."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=ReadyOut,
    responses={503: {"model": NotReadyOut, "description": "The model and index are still loading, or failed to load"}},
)
def readyz(runtime: RuntimeDep) -> JSONResponse | dict[str, object]:
    """Ready only when the model and the index are loaded."""
    core = runtime.core
    if core is None:
        detail = runtime.error or "loading model and index"
        return JSONResponse({"status": "not_ready", "detail": detail}, status_code=503)
    return {
        "status": "ready",
        "auth": "disabled" if runtime.settings.access.auth_disabled else "api-keys",
        "model": core.model.embedder.info.as_dict(),
        "index_version": core.model.index.version,
        "index_size": len(core.model.index),
    }


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text exposition format"},
        **error_responses(401, 429, 503),
    },
)
def metrics(runtime: RuntimeDep, service_metrics: MetricsDep, _: AnyKey) -> Response:
    if runtime.core is not None:
        service_metrics.catalog_images.set(len(runtime.core.model.index))
    return Response(generate_latest(service_metrics.registry), media_type=CONTENT_TYPE_LATEST)
