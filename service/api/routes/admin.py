"""Model rollout: see what is served, activate another model without downtime, roll back."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from reference_catalog import AuditEvent
from service.api.auth import AdminKey
from service.api.deps import CoreDep, RuntimeDep
from service.api.errors import RequestRejected
from service.api.schemas import ModelStatusOut, SwitchOut, error_responses
from service.models.registry import NothingToRollBack
from service.models.switch import SwitchBusy

router = APIRouter(prefix="/v1/admin", tags=["admin"])


class ActivateIn(BaseModel):
    checkpoint: str | None = Field(None, max_length=1000, description="Checkpoint file on the server (e.g. from train).")
    model: str | None = Field(None, max_length=200, description="open_clip architecture, with `pretrained`.")
    pretrained: str | None = Field(None, max_length=200)


@router.get("/model", response_model=ModelStatusOut, responses=error_responses(401, 403, 429, 503))
async def model_status(runtime: RuntimeDep, core: CoreDep, _: AdminKey) -> dict[str, Any]:
    """The model and index being served, the registry (active and history) and the state of the last switch."""
    registry = core.registry
    return {
        "serving": core.model.embedder.info.as_dict(),
        "index_version": core.model.index.version,
        "calibrated": core.model.calibrator is not None,
        "active": registry.active(),
        "history": registry.history(),
        "switch": runtime.switcher.snapshot(),
    }


@router.post(
    "/model/activate",
    status_code=202,
    response_model=SwitchOut,
    responses=error_responses(400, 401, 403, 409, 413, 422, 429, 503),
)
async def activate(body: ActivateIn, runtime: RuntimeDep, core: CoreDep, principal: AdminKey) -> dict[str, Any]:
    """Re-embed the catalog with another model in the background, then switch to it atomically."""
    base = core.settings.model_spec()
    if body.checkpoint:
        path = Path(body.checkpoint)
        if not os.path.isfile(path):  # False, not OSError, for names too long or with NUL bytes
            raise RequestRejected(f"no checkpoint file {body.checkpoint!r} on the server", 422)
        stored = await run_in_threadpool(core.registry.store_checkpoint, path)
        spec = replace(base, checkpoint=stored)
    elif body.model:
        spec = replace(base, name=body.model, pretrained=body.pretrained, checkpoint=None)
    else:
        raise RequestRejected("give a checkpoint, or a model with its pretrained tag", 422)
    try:
        started = runtime.switcher.switch(core, spec)
        core.audit.record(AuditEvent(principal.key_id, "model.activate", str(spec.checkpoint or spec.name), None,
                                       {"model": spec.name, "pretrained": spec.pretrained}))  # fmt: skip
        return started
    except SwitchBusy as exc:
        raise RequestRejected(str(exc), 409) from exc


@router.post(
    "/model/rollback", status_code=202, response_model=SwitchOut, responses=error_responses(401, 403, 409, 413, 429, 503)
)
async def rollback(runtime: RuntimeDep, core: CoreDep, principal: AdminKey) -> dict[str, Any]:
    """Switch back to the previously active model."""
    try:
        record = await run_in_threadpool(core.registry.rollback)
        core.audit.record(AuditEvent(principal.key_id, "model.rollback", record.fingerprint, None, {"weights": record.weights}))
        return runtime.switcher.switch(core, record.spec(core.settings.model_spec()), record=False)
    except NothingToRollBack as exc:
        raise RequestRejected(str(exc), 409) from exc
    except SwitchBusy as exc:
        raise RequestRejected(str(exc), 409) from exc
