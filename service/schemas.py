"""Pydantic models of the HTTP responses (the contract in DESIGN.md, as shown at /docs)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

Verdict = Literal["likely_counterfeit", "needs_review", "likely_authentic", "not_in_catalog"]


class MatchOut(BaseModel):
    image_id: str
    brand: str
    product: str
    label: Literal["authentic", "counterfeit"]
    similarity: float


class ImageResultOut(BaseModel):
    sha256: str
    risk: float | None
    in_catalog: bool
    nearest_authentic: float | None
    nearest_counterfeit: float | None
    matches: list[MatchOut]


class ModelOut(BaseModel):
    architecture: str
    weights: str
    fingerprint: str
    dim: int
    runtime: str
    random_weights: bool


class ScanOut(BaseModel):
    scan_id: str
    listing_id: str | None
    created_at: str
    risk: float | None
    verdict: Verdict
    calibrated: bool
    brand: str | None
    product: str | None
    model: ModelOut
    index_version: str
    images: list[ImageResultOut]
    reasons: list[str]


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
