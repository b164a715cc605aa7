"""A reviewer's verdict on a scan: recorded with it, and a confirmed counterfeit's photos join the catalog at once.

Who may review which scan, and for which brand, is the access policy's (service/access/policy.py: `review_brand`,
`check_fakes_target`); this module applies it to the stored scan and writes through the catalog writer, so that a
confirmed fake is searchable (as a known fake) when the feedback is answered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reference_catalog import BlobStore, CatalogRepository
from reference_catalog.records import DuplicateLabelConflict
from service.access.policy import check_fakes_target, review_brand
from service.catalog.validation import clean_name, clean_note
from service.catalog.writer import CatalogWriter
from service.errors import Conflict, InvalidValue, NotFound
from service.models.snapshot import ModelSlot
from service.scanning.brand_views import stored_evidence
from service.scanning.feedback import FeedbackStore
from service.scanning.photo_prep import PhotoInput
from service.scanning.records import ScanRecordStore
from service.scanning.result import ImageResultOut, ScanResult
from service.scanning.scoring import score_photo


@dataclass(eq=False)
class ScanReview:
    """Reviewers' feedback on scans; a confirmed fake's photos join the catalog through the writer."""

    scans: ScanRecordStore
    feedback: FeedbackStore
    catalog: CatalogRepository
    scan_photos: BlobStore
    writer: CatalogWriter
    slot: ModelSlot

    def give_feedback(
        self,
        scan_id: str,
        verdict: str,
        note: str | None = None,
        brand: str | None = None,
        product: str | None = None,
        actor: str = "system",
        allowed_brands: frozenset[str] | None = None,
    ) -> dict[str, Any]:
        """Record a reviewer's verdict; a confirmed counterfeit's photos join the catalog as known fakes at once.

        `allowed_brands` (a brand key's brands; None: an admin) limits the feedback to those brands: it is recorded as
        given for one of them (`brand`, or the one the scan concerns), and on a scan that also concerns other brands
        only the photos that match the key's brands' catalog (by the evidence it may see) join the catalog.
        """
        note = clean_note(note)
        record = self.scans.get(scan_id)
        access = self.scans.access(scan_id)
        if record is None or access is None:
            raise NotFound(f"no scan {scan_id!r}")
        scan_brands = set(access[1])
        brand = clean_name(brand, "brand") if brand else None
        images = record.images
        given_for = review_brand(allowed_brands, scan_brands, brand)
        if allowed_brands is not None:
            # Its own evidence only: another brand's matches neither choose the target nor show up in a message.
            images = [
                image.model_copy(update={"matches": [m for m in image.matches if m.brand in allowed_brands],
                                         "near_duplicates": [d for d in image.near_duplicates if d.brand in allowed_brands]})
                for image in images
            ]  # fmt: skip
            if scan_brands - allowed_brands:  # a shared scan: the photos that match this key's brands
                scoring = self.slot.model.scoring
                images = [image for image in images if score_photo(stored_evidence(image), scoring).in_catalog]
                if verdict == "confirmed_counterfeit" and not images:
                    raise InvalidValue(
                        "no photo of this scan matches your brands' reference images closely enough to add it as a known "
                        "fake; add it with POST /v1/catalog/images"
                    )
        added: list[str] = []
        index_version: str | None = None
        if verdict == "confirmed_counterfeit":
            with self.writer.lock:  # check every photo first, so that a rejected request adds nothing
                plan = [self._target(record, image, brand, product) for image in images]
                check_fakes_target(allowed_brands, {target_brand for _, target_brand, _ in plan})
                for sha, target_brand, target_product in plan:
                    added_image = self.writer.add_reference(
                        PhotoInput(self.scan_photos.get(sha)),
                        target_brand,
                        target_product,
                        "counterfeit",
                        f"scan:{scan_id}",
                        actor,
                        group=f"scan:{scan_id}",  # one listing's photos are one shoot
                    )
                    added.append(added_image.ref.image_id)
                    index_version = added_image.index_version
        return self.feedback.add(scan_id, verdict, note, added, index_version, actor, given_for)

    def _target(self, record: ScanResult, image: ImageResultOut, brand: str | None, product: str | None) -> tuple[str, str, str]:
        """Where a confirmed fake's photo goes (its sha256, brand, product); refused when it cannot go anywhere."""
        sha = image.sha256
        if not record.photos_kept or not self.scan_photos.path(sha).is_file():
            raise Conflict(
                "this scan's photos were not kept (COUNTERFEIT_SCAN_KEEP_SCAN_PHOTOS); add them with POST /v1/catalog/images"
            )
        top = image.matches[0] if image.matches else None
        target_brand = brand or record.brand or (top.brand if top else None)
        target_product = product or record.product or (top.product if top else None)
        if not target_brand or not target_product:
            raise InvalidValue("the scan matched no product: give brand and product with the feedback")
        target_brand, target_product = clean_name(target_brand, "brand"), clean_name(target_product, "product")
        existing = self.catalog.find_duplicate(target_brand, target_product, sha)
        if existing is not None and existing.label != "counterfeit":
            raise Conflict(str(DuplicateLabelConflict(existing)))
        return sha, target_brand, target_product
