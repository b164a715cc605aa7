"""Pydantic models of the HTTP responses (the contract in DESIGN.md, as shown at /docs)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

# The scan result's models (ScanOut, MatchOut, FeedbackOut...) are the scan pipeline's own type, returned as they are:
# service/scanning/result.py.
from service.scanning.result import FeedbackVerdict
from service.scanning.result import Label as Label  # re-exported: the catalog routes use it
from service.scanning.result import ModelOut as ModelOut  # re-exported: the health and admin responses use it


class FeedbackIn(BaseModel):
    verdict: FeedbackVerdict
    note: str | None = Field(None, max_length=2000)
    brand: str | None = Field(None, max_length=200, description="Brand for confirmed fakes; default: the scan's.")
    product: str | None = Field(None, max_length=200, description="Product for confirmed fakes; default: the scan's.")


class ReferenceImageOut(BaseModel):
    image_id: str
    sha256: str
    brand: str
    product: str
    label: Label
    source: str | None
    media_type: str
    width: int
    height: int
    created_at: str


class AddedImageOut(ReferenceImageOut):
    duplicate: bool
    index_version: str


class DeletedImageOut(BaseModel):
    deleted: str
    index_version: str


class BrandOut(BaseModel):
    name: str
    products: int
    images: int


class BrandsOut(BaseModel):
    brands: list[BrandOut]


class ProductOut(BaseModel):
    brand: str
    name: str
    authentic: int
    counterfeit: int


class ProductsOut(BaseModel):
    products: list[ProductOut]


class ImagesOut(BaseModel):
    images: list[ReferenceImageOut]
    total: int


class RelabelIn(BaseModel):
    label: Label


class RelabeledImageOut(ReferenceImageOut):
    index_version: str


class ImportRowErrorOut(BaseModel):
    row: int | None = Field(description="Line of manifest.csv; null for the folder layout")
    path: str | None = Field(description="The file's path in the archive (or as the manifest gives it)")
    reason: str


class ImportJobOut(BaseModel):
    job_id: str
    state: Literal["queued", "running", "succeeded", "failed"]
    filename: str | None
    format: Literal["zip", "tar.gz"]
    archive_bytes: int
    split: str | None
    layout: Literal["manifest", "folders"] | None = Field(description="Known once the archive has been checked")
    created_by: str
    created_at: str
    started_at: str | None
    finished_at: str | None
    rows_total: int | None = Field(description="Known once the archive has been checked")
    rows_done: int
    images_added: int
    duplicates_skipped: int
    error_count: int = Field(description="All row errors; `errors` lists the first 1000")
    errors: list[ImportRowErrorOut]
    failure: str | None = Field(description="Why the whole job failed")


class ImportJobsOut(BaseModel):
    jobs: list[ImportJobOut]


# --- errors: one shape for the whole API (built by service/api/errors.py's error_body / error_response) ---------------


class ErrorItemOut(BaseModel):
    """One invalid part of a request."""

    loc: list[str | int] = Field(description='Where: e.g. ["body", "label"] or ["query", "limit"]')
    msg: str
    type: str = Field(description="Machine-readable kind, e.g. missing, literal_error, string_too_long")


class ErrorOut(BaseModel):
    """Every error response (4xx, 5xx): one sentence; request validation errors (422) list the invalid fields too."""

    detail: str = Field(description="What went wrong, in one sentence")
    errors: list[ErrorItemOut] = Field(default_factory=list, description="Request validation errors only: each invalid field")


ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Bad request: a body that cannot be parsed, not an image, corrupt or truncated data, too many photos, an empty archive",
    401: "No API key, or an unknown or revoked one (with WWW-Authenticate)",
    403: "The key's role or brands do not allow this",
    404: "No such record, or one this key may not see (the same answer)",
    409: "Conflict: a label conflict in the catalog, or a model switch already running",
    413: "Too large: the request body, a file, or an image's pixels",
    415: "Unsupported format, or a declared type that does not match the bytes",
    422: "Invalid or missing fields (`errors` lists them)",
    429: "Too many requests: try again after Retry-After seconds",
    503: "Not ready: the model and index are still loading (Retry-After)",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for error statuses, each with the ErrorOut body (for a router's or a route's `responses=`)."""
    return {status: {"model": ErrorOut, "description": ERROR_DESCRIPTIONS[status]} for status in statuses}


# --- health -------------------------------------------------------------------------------------------------------


class HealthOut(BaseModel):
    status: Literal["ok"]


class ReadyOut(BaseModel):
    status: Literal["ready"]
    auth: Literal["api-keys", "disabled"]
    model: ModelOut
    index_version: str
    index_size: int


class NotReadyOut(ErrorOut):
    """/readyz while loading (or after a failed load): the error shape, with the status."""

    status: Literal["not_ready"]


# --- admin: model rollout -------------------------------------------------------------------------------------------


class ModelRecordOut(BaseModel):
    name: str
    pretrained: str | None
    checkpoint: str | None
    fingerprint: str
    weights: str
    activated_at: str


class SwitchTargetOut(BaseModel):
    model: str
    pretrained: str | None
    checkpoint: str | None
    fingerprint: str | None = Field(None, description="Once the switch is done")
    index_version: str | None = Field(None, description="Once the switch is done")


class SwitchOut(BaseModel):
    """The last model switch (activation or rollback): it runs in the background."""

    state: Literal["idle", "preparing", "done", "failed"]
    target: SwitchTargetOut | None
    error: str | None
    started_at: str | None
    finished_at: str | None


class ModelStatusOut(BaseModel):
    serving: ModelOut
    index_version: str
    calibrated: bool
    active: ModelRecordOut | None = Field(description="The registry's active model (none: never switched)")
    history: list[ModelRecordOut] = Field(description="Models to roll back to, most recent first")
    switch: SwitchOut


# --- audit ----------------------------------------------------------------------------------------------------------


class AuditEntryOut(BaseModel):
    id: int
    at: str = Field(description="ISO 8601, UTC")
    actor: str = Field(description="Key id (or system, cli)")
    action: str = Field(description="e.g. catalog.add, catalog.delete, catalog.relabel, key.create, model.activate")
    target: str | None
    brand: str | None
    details: dict[str, Any]


class AuditLogOut(BaseModel):
    entries: list[AuditEntryOut]
