"""The catalog's plain records: what the repository hands out and takes in (no database types)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class ImageRef:
    """What scoring and evidence need to know about a reference image."""

    key: int
    image_id: str
    brand: str
    product: str
    label: str
    sha256: str
    source: str | None
    media_type: str
    width: int
    height: int
    created_at: datetime

    def as_dict(self) -> dict[str, object]:
        """The public view: no internal key, times as ISO 8601."""
        view = asdict(self)
        del view["key"]
        return {**view, "created_at": self.created_at.isoformat()}


@dataclass(frozen=True)
class NewImage:
    brand: str
    product: str
    label: str
    sha256: str
    media_type: str
    width: int
    height: int
    source: str | None = None
    phash: int | None = None  # signed 64-bit view of the perceptual hash
    group: str | None = None  # photo shoot; None: the image is a shoot of its own


@dataclass(frozen=True)
class DetailFeatures:
    """Detail features (`embeddings.detail`) of newly added images, row for row, and the layout that made them."""

    layout: str
    rows: np.ndarray


@dataclass(frozen=True)
class BrandSummary:
    name: str
    products: int
    images: int


@dataclass(frozen=True)
class ProductSummary:
    brand: str
    name: str
    authentic: int
    counterfeit: int


class DuplicateLabelConflict(ValueError):
    """The same image bytes are already in the catalog for this product under the other label."""

    def __init__(self, existing: ImageRef) -> None:
        super().__init__(
            f"this image is already in the catalog as {existing.label} for {existing.brand}/{existing.product} "
            f"(image {existing.image_id}); delete it first to relabel"
        )
        self.existing = existing


ChangeAction = Literal["add", "relabel", "delete"]


@dataclass(frozen=True)
class ChangeBatch:
    """What the catalog's change feed says happened after a revision: the revision it brings a reader to, and each
    image key changed since with its latest action (the image's state now is what counts: look it up)."""

    revision: int
    changes: dict[int, ChangeAction]
