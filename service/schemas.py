"""Pydantic models of the HTTP responses (the contract in DESIGN.md, as shown at /docs)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Verdict = Literal["likely_counterfeit", "needs_review", "likely_authentic", "not_in_catalog"]


class MatchOut(BaseModel):
    image_id: str
    brand: str
    product: str
    label: Literal["authentic", "counterfeit"]
    similarity: float


class NearDuplicateOut(BaseModel):
    image_id: str
    brand: str
    product: str
    label: Literal["authentic", "counterfeit"]
    distance: int


class ImageResultOut(BaseModel):
    sha256: str
    risk: float | None
    score: float | None
    in_catalog: bool
    nearest_authentic: float | None
    nearest_counterfeit: float | None
    margin: float | None
    head_probability: float | None = Field(
        None, description="The authenticity head's P(counterfeit) for this photo (none: no head covers it)."
    )
    near_duplicates: list[NearDuplicateOut]
    matches: list[MatchOut]


class ReasonOut(BaseModel):
    """A machine-readable reason code, a sentence for people, and the numbers behind it."""

    model_config = ConfigDict(extra="allow")
    code: str
    message: str


class CalibrationOut(BaseModel):
    method: str
    fitted_at: str | None
    index_version_at_fit: str | None
    thresholds: dict[str, float]
    targets: dict[str, float | None]


class AuthenticityHeadOut(BaseModel):
    """The authenticity heads a scan was scored with: which fit, on what, at which catalog revision."""

    version: str
    catalog_revision: int
    fitted_at: str
    n_photos: int
    n_extra_photos: int
    scopes: list[str]


class ModelOut(BaseModel):
    architecture: str
    weights: str
    fingerprint: str
    dim: int
    runtime: str
    random_weights: bool


FeedbackVerdict = Literal["confirmed_counterfeit", "confirmed_authentic", "not_applicable"]


class FeedbackIn(BaseModel):
    verdict: FeedbackVerdict
    note: str | None = Field(None, max_length=2000)
    brand: str | None = Field(None, max_length=200, description="Brand for confirmed fakes; default: the scan's.")
    product: str | None = Field(None, max_length=200, description="Product for confirmed fakes; default: the scan's.")


class FeedbackOut(BaseModel):
    feedback_id: str
    scan_id: str
    verdict: FeedbackVerdict
    note: str | None
    created_at: str
    added_image_ids: list[str]
    index_version: str | None


class ScanOut(BaseModel):
    scan_id: str
    listing_id: str | None
    created_at: str
    risk: float | None
    verdict: Verdict
    calibrated: bool
    calibration: CalibrationOut | None
    score: float | None
    features: dict[str, float]
    brand: str | None
    product: str | None
    model: ModelOut
    index_version: str
    authenticity_head: AuthenticityHeadOut | None = None
    images: list[ImageResultOut]
    reasons: list[ReasonOut]
    photos_kept: bool
    feedback: list[FeedbackOut] = []


class ReferenceImageOut(BaseModel):
    image_id: str
    sha256: str
    brand: str
    product: str
    label: Literal["authentic", "counterfeit"]
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
    label: Literal["authentic", "counterfeit"]


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
