"""The one scan pipeline: check, prepare, embed, search, score, record.

Every scan goes through these stages, whoever asks: POST /v1/scan and `counterfeit-scan scan-batch` through the
micro-batcher (service/scanning/batching.py, which runs the stages on its own threads and batches the photos of
concurrent scans through `embed` and their searches through `search`), `counterfeit-scan scan` through `scan` (one
listing), evaluation and calibration through `scan_many` (many listings in big batches, nothing recorded).

- check: the request as a whole (photo count, names), before any work; a refusal is a service error.
- prepare: each photo's declared type checked, decoded (JPEGs straight to about the model's input size), cropped and
  resized to the model input, hashed (SHA-256 and perceptual hash): service/scanning/photo_prep.py. One resampling per
  photo. The batcher runs it on its decoding threads, or in worker processes (`ProcessPreparer`).
- embed: the model's retrieval vectors and detail features, in forward passes of at most a batch.
- search: one index search per brand/product scope: the top-k catalog images per photo.
- score: the evidence (matches, near-duplicates, the authenticity head's opinion) turned into the scan result
  (service/scanning/scoring.py).
- record: results stored in one transaction, photos kept per `keep_scan_photos`, each brand's view of a scan that
  concerns several stored beside it.

A scan takes the serving model once (`ModelSlot.model`) and runs every stage on it, so a model switch meanwhile never
mixes versions within a listing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Protocol

import numpy as np
from tqdm import tqdm

from embeddings import ImageRejected
from embeddings.decode import ImageLimits
from embeddings.embedder import Embeddings
from embeddings.index import IndexHit
from embeddings.preprocess import PreprocessSpec
from reference_catalog import BlobStore
from service.catalog.index_keeper import IndexKeeper
from service.catalog.validation import clean_id, clean_name
from service.config import Settings
from service.errors import InvalidRequest
from service.models.authenticity_heads import HeadKeeper, head_opinion
from service.models.snapshot import ModelSlot, ServingModel
from service.scanning.brand_views import brand_view, view_scoring
from service.scanning.photo_prep import PhotoInput, PreparedPhoto, prepare_listing
from service.scanning.records import BrandViews, ScanRecordStore, concerned_brands, new_scan_id
from service.scanning.result import FLAGGED, ScanResult
from service.scanning.scoring import Match, NearDuplicate, PhotoEvidence, photo_result, rounded, score_listing

Searched = tuple[list[list[IndexHit]], str]  # top-k hits per photo, and the version of the index searched


class Preparer(Protocol):
    """`prepare_listing`, here or in worker processes (`photo_prep.ProcessPreparer.prepare`)."""

    def __call__(self, photos: Sequence[PhotoInput], limits: ImageLimits, spec: PreprocessSpec) -> list[PreparedPhoto]: ...


@dataclass(frozen=True)
class ScanRequest:
    """One listing to scan, checked (`ScanPipeline.check`): its photos, the scope to compare with, and who asks."""

    photos: Sequence[PhotoInput]
    brand: str | None = None
    product: str | None = None
    listing_id: str | None = None
    record: bool = True
    actor: str = "system"


@dataclass(eq=False)
class ScanPipeline:
    """The stages of a scan, and the drivers built from them; the parts it reads are wired by service/core.py."""

    settings: Settings
    slot: ModelSlot
    index_keeper: IndexKeeper
    heads: HeadKeeper
    scans: ScanRecordStore
    scan_photos: BlobStore

    # --- the drivers ------------------------------------------------------------------------------------------------
    def scan(
        self,
        photos: Sequence[PhotoInput],
        brand: str | None = None,
        product: str | None = None,
        listing_id: str | None = None,
        record: bool = True,
        actor: str = "system",
    ) -> ScanResult:
        """Scan one listing's photos against the catalog; returns (and records) the scan result."""
        request = self.check(ScanRequest(photos, brand, product, listing_id, record, actor))
        model = self.slot.model  # one snapshot: a model switch meanwhile does not mix versions within this scan
        prepared = self.prepare(request.photos, model)
        result = self.score(model, request, prepared, self.embed(model, pixels(prepared)))
        if request.record:
            self.record([(result, request)])
        return result

    def scan_many(
        self, listings: Sequence[Sequence[PhotoInput]], show_progress: bool = False, batch_photos: int = 64
    ) -> list[ScanResult | ImageRejected]:
        """Scan many listings without recording them (evaluation, calibration), embedding photos in big batches.

        A listing whose photo cannot be decoded yields its ImageRejected instead of a result.
        """
        results: list[ScanResult | ImageRejected] = []
        model = self.slot.model
        bar = tqdm(total=sum(len(x) for x in listings), desc="scanning", unit="photo", disable=not show_progress)
        start = 0
        while start < len(listings):
            chunk: list[Sequence[PhotoInput]] = []
            size = 0
            while start + len(chunk) < len(listings) and (not chunk or size + len(listings[start + len(chunk)]) <= batch_photos):
                size += len(listings[start + len(chunk)])
                chunk.append(listings[start + len(chunk)])
            prepared: list[list[PreparedPhoto] | ImageRejected] = []
            for photos in chunk:
                try:
                    prepared.append(self.prepare(photos, model))
                except ImageRejected as exc:
                    prepared.append(exc)
            embedded = self.embed(model, pixels([p for item in prepared if not isinstance(item, ImageRejected) for p in item]))
            offset = 0
            for photos, item in zip(chunk, prepared, strict=True):
                if isinstance(item, ImageRejected):
                    results.append(item)
                    continue
                rows = embedded.rows(offset, offset + len(item))
                results.append(self.score(model, ScanRequest(photos, record=False), item, rows))
                offset += len(item)
            bar.update(size)
            start += len(chunk)
        bar.close()
        return results

    # --- the stages -------------------------------------------------------------------------------------------------
    def check(self, request: ScanRequest) -> ScanRequest:
        """Validate a scan request before any work (photo count, names); the request with its names cleaned."""
        photos = request.photos
        if not photos:
            raise InvalidRequest("send at least one photo in the 'images' field")
        limit = self.settings.limits.max_photos_per_scan
        if len(photos) > limit:
            raise InvalidRequest(f"{len(photos)} photos sent; a scan takes at most {limit}")
        brand = clean_name(request.brand, "brand") if request.brand else None
        product = clean_name(request.product, "product") if request.product else None
        clean_id(request.listing_id, "listing_id")  # echoed in the answer and stored: printable only
        return replace(request, brand=brand, product=product)

    def prepare(
        self, photos: Sequence[PhotoInput], model: ServingModel, preparer: Preparer = prepare_listing
    ) -> list[PreparedPhoto]:
        """Decode (JPEG in draft mode, to about the model's input size), preprocess and hash one listing's photos for
        `model`. Raises ImageRejected naming the photo that failed."""
        return preparer(photos, self.settings.image_limits(), model.embedder.preprocess)

    @staticmethod
    def embed(model: ServingModel, batch: np.ndarray, max_batch: int | None = None) -> Embeddings:
        """The model's vectors and detail features for stacked model inputs (`pixels`), in forward passes of at most
        `max_batch` rows (default: the model's batch size)."""
        step = max(1, max_batch or model.embedder.spec.batch_size)
        if len(batch) <= step:
            return model.embedder.embed_batch_with_detail(batch)
        parts = [model.embedder.embed_batch_with_detail(batch[i : i + step]) for i in range(0, len(batch), step)]
        return concatenate(parts)

    def search(self, model: ServingModel, vectors: np.ndarray, brand: str | None, product: str | None) -> Searched:
        """One index search for photos that share a brand/product scope: top-k hits per row, and the index version."""
        index = model.index
        index_version = index.version
        return index.search(vectors, self.settings.scoring.top_k, self.index_keeper.scope(brand, product)), index_version

    def score(
        self,
        model: ServingModel,
        request: ScanRequest,
        prepared: Sequence[PreparedPhoto],
        embedded: Embeddings,
        searched: Searched | None = None,
    ) -> ScanResult:
        """Search (unless `searched` is given: the batcher searches for many listings at once), score and describe
        one listing whose photos `model` embedded.

        The result is put together as plain values and validated once (`model_validate`, in pydantic's compiled core):
        cheaper than building each photo, match and reason as a model of its own."""
        brand, product = request.brand, request.product
        searched = searched or self.search(model, embedded.vectors, brand, product)
        evidence = self._evidence(model, embedded, [photo.phash for photo in prepared], brand, product, searched)
        calibrator = model.calibrator
        head_missing = self.heads.missing_reason(model.heads, model.index.revision, evidence, brand)
        score = score_listing(evidence, model.scoring, calibrator, head_missing)
        reasons = [reason.as_dict() for reason in score.reasons]
        scope_keys = self.index_keeper.scope(brand, product)
        if scope_keys is not None and len(scope_keys) == 0:
            scope = "/".join(x for x in (brand, product) if x)
            reasons.insert(0, {"code": "empty_scope", "message": f"the catalog has no reference images for {scope}"})
        if model.embedder.info.random_weights:
            reasons.insert(
                0,
                {
                    "code": "random_model_weights",
                    "message": "the model has random weights (test configuration): these scores are meaningless",
                },
            )
        return ScanResult.model_validate({
            "scan_id": new_scan_id(),
            "listing_id": request.listing_id,
            "created_at": datetime.now(UTC).isoformat(),
            "risk": rounded(score.risk),
            "verdict": score.verdict,
            "calibrated": score.calibrated,
            "calibration": calibrator.summary() if calibrator is not None else None,
            "score": rounded(score.score),
            "features": {name: round(value, 6) for name, value in score.features.items()},
            "brand": brand,
            "product": product,
            "model": model.embedder.info.as_dict(),
            "index_version": searched[1],
            "authenticity_head": model.heads.summary() if model.heads is not None else None,
            "images": [
                {"sha256": photo.sha256, **photo_result(photo_score, photo_evidence, calibrator)}
                for photo, photo_score, photo_evidence in zip(prepared, score.photos, evidence, strict=True)
            ],
            "reasons": reasons,
            "photos_kept": False,
        })  # fmt: skip

    def _evidence(
        self,
        model: ServingModel,
        embedded: Embeddings,
        phashes: Sequence[int],
        brand: str | None,
        product: str | None,
        searched: Searched,
    ) -> list[PhotoEvidence]:
        """What the index, the near-duplicate table and the authenticity head say of each photo."""
        refs = self.index_keeper.refs
        scope = self.index_keeper.scope(brand, product)
        allowed = None if scope is None else set(scope.tolist())
        max_bits = self.settings.scoring.near_duplicate_max_bits
        evidence = []
        for row, phash, details in zip(searched[0], phashes, embedded.details, strict=True):
            matches = [
                Match(ref.image_id, ref.brand, ref.product, ref.label, hit.similarity)
                for hit in row
                if (ref := refs.get(hit.id)) is not None
            ]
            duplicates = [
                NearDuplicate(ref.image_id, ref.brand, ref.product, ref.label, distance)
                for key, distance in self.index_keeper.near_duplicates.find(phash, max_bits)
                if (ref := refs.get(key)) is not None and (allowed is None or key in allowed)
            ]
            top = matches[0] if matches else None
            head = head_opinion(
                model.heads, details, brand or (top.brand if top else None), product or (top.product if top else None)
            )
            evidence.append(PhotoEvidence(matches, duplicates, head))
        return evidence

    def record(self, scans: Sequence[tuple[ScanResult, ScanRequest]]) -> None:
        """Store scans (each result with its request) in one transaction; keep their photos when the policy says so, so
        that feedback can add them to the catalog. A scan is answered only once its record is stored."""
        policy = self.settings.scoring.keep_scan_photos
        for result, request in scans:
            if policy == "all" or (policy == "flagged" and result.verdict in FLAGGED):
                for image, photo in zip(result.images, request.photos, strict=True):
                    self.scan_photos.put(image.sha256, photo.data)
                result.photos_kept = True  # before it is answered: the answer says so
        records = [
            (result, datetime.fromisoformat(result.created_at), result.model.fingerprint, request.actor)
            for result, request in scans
        ]
        views = {result.scan_id: views for result, _ in scans if (views := self._brand_views(result))}
        self.scans.save_many(records, views)

    def _brand_views(self, result: ScanResult) -> BrandViews:
        """Each brand's verdict and risk of a scan that concerns several brands, as its review queue will see it."""
        brands = concerned_brands(result)
        if len(brands) < 2:
            return {}
        view = view_scoring(self.slot.model, result)
        seen = {brand: brand_view(result, {brand}, view) for brand in brands}
        return {brand: (v.verdict, v.risk) for brand, v in seen.items()}


def pixels(prepared: Sequence[PreparedPhoto]) -> np.ndarray:
    """Prepared photos' model inputs stacked into one `(n, size, size, 3)` batch."""
    return np.stack([photo.pixels for photo in prepared]) if prepared else np.empty((0, 1, 1, 3), dtype=np.uint8)


def concatenate(parts: Sequence[Embeddings]) -> Embeddings:
    return Embeddings(np.concatenate([p.vectors for p in parts]), np.concatenate([p.details for p in parts]))
