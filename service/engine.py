"""ScanEngine: the model, the catalog and the index behind both the HTTP service and the CLI."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from embeddings import DecodedImage, ImageEmbedder, ImageRejected, VectorIndex, decode_image, load_embedder
from reference_catalog import LABELS, BlobStore, CatalogRepository, ImageRef, NewImage, create_catalog_engine
from reference_catalog.repository import DuplicateLabelConflict
from service.config import Settings
from service.errors import RequestRejected
from service.scan_records import ScanRecordStore, new_scan_id
from service.scoring import Match, ScoringParams, score_listing

log = logging.getLogger(__name__)

ACCEPTED_CONTENT_TYPES = {"image/jpeg", "image/png", "image/webp", "image/jpg", "application/octet-stream", ""}
DEFAULT_MATCH_THRESHOLD = 0.5
MAX_NAME_LENGTH = 200


@dataclass(frozen=True)
class PhotoInput:
    data: bytes
    filename: str | None = None
    content_type: str | None = None


@dataclass(frozen=True)
class AddedImage:
    ref: ImageRef
    created: bool
    index_version: str


@dataclass
class ImportSummary:
    added: int = 0
    duplicates: int = 0
    errors: list[tuple[str, str]] | None = None


def clean_name(value: str | None, field: str) -> str:
    """Validate a brand or product name: non-empty, bounded, printable."""
    text = (value or "").strip()
    if not text:
        raise RequestRejected(f"{field} is required", 422)
    if len(text) > MAX_NAME_LENGTH:
        raise RequestRejected(f"{field} is longer than {MAX_NAME_LENGTH} characters", 422)
    if any(ord(c) < 32 for c in text):
        raise RequestRejected(f"{field} contains control characters", 422)
    return text


class ScanEngine:
    def __init__(self, settings: Settings, embedder: ImageEmbedder) -> None:
        self.settings = settings
        self.embedder = embedder
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = create_catalog_engine(settings.resolved_database_url)
        self.catalog = CatalogRepository(self.db)
        self.catalog.create_schema()
        self.scans = ScanRecordStore(self.db)
        self.blobs = BlobStore(settings.blob_dir)
        self.index = VectorIndex(embedder.info.dim, embedder.info.fingerprint)
        self._refs: dict[int, ImageRef] = {}
        self._scopes: dict[tuple[str | None, str | None], tuple[int, np.ndarray]] = {}
        self._generation = 0
        self._write_lock = threading.RLock()
        self._dirty = False
        threshold = settings.match_threshold
        if threshold is None:
            threshold = embedder.default_match_threshold or DEFAULT_MATCH_THRESHOLD
        self.scoring = ScoringParams(
            match_threshold=threshold,
            counterfeit_threshold=settings.counterfeit_threshold,
            authentic_threshold=settings.authentic_threshold,
            vote_temperature=settings.vote_temperature,
        )

    @classmethod
    def open(cls, settings: Settings, show_progress: bool = False) -> ScanEngine:
        """Load the model, the catalog and the index, repairing or rebuilding the index if it is stale."""
        embedder = load_embedder(settings.model_spec(), settings.export_dir)
        engine = cls(settings, embedder)
        engine.sync_index(show_progress)
        return engine

    # --- index lifecycle ------------------------------------------------------------------------------------
    @property
    def index_path(self) -> Path:
        return self.settings.index_dir / f"{self.embedder.info.fingerprint[:16]}.faiss"

    def sync_index(self, show_progress: bool = False) -> None:
        """Make the in-memory index agree with the catalog: load the saved one, then add/drop what differs."""
        info = self.embedder.info
        with self._write_lock:
            revision = self.catalog.revision()
            index = self._load_saved_index()
            refs = self.catalog.all_images()
            self._refs = {ref.key: ref for ref in refs}
            self._catalog_changed()
            if index is not None and index.revision == revision and set(index.ids().tolist()) == set(self._refs):
                self.index = index
                return
            index = index or VectorIndex(info.dim, info.fingerprint)
            catalog_keys = set(self._refs)
            indexed = set(index.ids().tolist())
            index.remove(np.fromiter(indexed - catalog_keys, dtype=np.int64))
            missing = catalog_keys - indexed
            keys, vectors = self.catalog.stored_vectors(info.fingerprint, info.dim)
            if len(keys):
                keep = np.isin(keys, np.fromiter(missing, dtype=np.int64))
                index.add(keys[keep], vectors[keep])
            to_embed = sorted(missing - set(keys.tolist()))
            if to_embed:
                log.info("embedding %d catalog images with %s", len(to_embed), info.short_id)
                self._embed_stored(index, [self._refs[k] for k in to_embed], show_progress)
            index.revision = revision
            self.index = index
            self.save_index()

    def _load_saved_index(self) -> VectorIndex | None:
        if not self.index_path.is_file():
            return None
        try:
            index = VectorIndex.load(self.index_path)
        except (OSError, ValueError, RuntimeError) as exc:
            log.warning("ignoring unreadable index file %s: %s", self.index_path, exc)
            return None
        if index.fingerprint != self.embedder.info.fingerprint or index.dim != self.embedder.info.dim:
            return None
        return index

    def _embed_stored(self, index: VectorIndex, refs: Sequence[ImageRef], show_progress: bool) -> None:
        step = 64
        bar = tqdm(total=len(refs), desc="embedding catalog", unit="img", disable=not show_progress)
        for start in range(0, len(refs), step):
            chunk = refs[start : start + step]
            images = [self._decode_stored(ref) for ref in chunk]
            vectors = self.embedder.embed_images(images)
            keys = np.array([ref.key for ref in chunk], dtype=np.int64)
            self.catalog.store_vectors(self.embedder.info.fingerprint, keys.tolist(), vectors)
            index.add(keys, vectors)
            bar.update(len(chunk))
        bar.close()

    def _decode_stored(self, ref: ImageRef) -> Image.Image:
        return decode_image(self.blobs.get(ref.sha256), self.settings.image_limits(), self.embedder.input_size).image

    def rebuild_index(self, show_progress: bool = False) -> VectorIndex:
        """Re-embed every catalog image with the current model and replace the index."""
        with self._write_lock:
            info = self.embedder.info
            self.catalog.drop_vectors(info.fingerprint)
            refs = self.catalog.all_images()
            index = VectorIndex(info.dim, info.fingerprint)
            self._embed_stored(index, refs, show_progress)
            index.revision = self.catalog.revision()
            self._refs = {ref.key: ref for ref in refs}
            self._catalog_changed()
            self.index = index
            self.save_index()
            return index

    def save_index(self) -> None:
        with self._write_lock:
            self.index.save(self.index_path)
            self._dirty = False

    def save_index_if_dirty(self) -> bool:
        if not self._dirty:
            return False
        self.save_index()
        return True

    # --- decoding -------------------------------------------------------------------------------------------
    def decode(self, photo: PhotoInput) -> DecodedImage:
        declared = (photo.content_type or "").split(";")[0].strip().lower()
        if declared not in ACCEPTED_CONTENT_TYPES:
            raise ImageRejected(f"unsupported content type {declared!r}: send image/jpeg, image/png or image/webp", 415)
        decoded = decode_image(photo.data, self.settings.image_limits(), self.embedder.input_size)
        if declared.startswith("image/") and declared.replace("jpg", "jpeg") != decoded.media_type:
            raise ImageRejected(f"declared {declared} but the bytes are {decoded.format}", 415)
        return decoded

    # --- catalog writes ------------------------------------------------------------------------------------
    def add_reference(self, photo: PhotoInput, brand: str, product: str, label: str, source: str | None = None) -> AddedImage:
        """Add one reference image; it is searchable when this returns. Nothing is written if it is rejected."""
        brand, product = clean_name(brand, "brand"), clean_name(product, "product")
        if label not in LABELS:
            raise RequestRejected(f"label must be one of {', '.join(LABELS)}, not {label!r}", 422)
        if source is not None and len(source) > 500:
            raise RequestRejected("source is longer than 500 characters", 422)
        decoded = self.decode(photo)
        new = NewImage(brand, product, label, decoded.sha256, decoded.media_type, decoded.width, decoded.height, source)
        with self._write_lock:
            existing = self.catalog.find_duplicate(brand, product, decoded.sha256)
            if existing is not None:
                if existing.label != label:
                    raise RequestRejected(str(DuplicateLabelConflict(existing)), 409)
                return AddedImage(existing, False, self.index.version)
            vectors = self.embedder.embed_images([decoded.image])
            self.blobs.put(decoded.sha256, photo.data)
            (ref,) = self._commit([new], vectors)
            return AddedImage(ref, True, self.index.version)

    def _commit(self, images: Sequence[NewImage], vectors: np.ndarray) -> list[ImageRef]:
        """Write rows and vectors in one transaction, then make them searchable."""
        refs = self.catalog.add_images(images, vectors, self.embedder.info.fingerprint)
        fresh = [(i, ref) for i, ref in enumerate(refs) if ref.key not in self._refs]
        if fresh:
            rows = [i for i, _ in fresh]
            self.index.add(np.array([ref.key for _, ref in fresh], dtype=np.int64), vectors[rows])
            for _, ref in fresh:
                self._refs[ref.key] = ref
        self.index.revision = self.catalog.revision()
        self._catalog_changed()
        self._dirty = True
        return refs

    def import_rows(
        self, rows: Sequence[tuple[str, PhotoInput, str, str, str, str | None]], show_progress: bool = False
    ) -> ImportSummary:
        """Import (row name, photo, brand, product, label, source) rows; bad rows are reported, good ones kept."""
        summary = ImportSummary(errors=[])
        assert summary.errors is not None
        bar = tqdm(total=len(rows), desc="importing", unit="img", disable=not show_progress)
        step = 32
        for start in range(0, len(rows), step):
            batch: list[tuple[NewImage, DecodedImage, bytes]] = []
            seen: dict[tuple[str, str, str], str] = {}
            with self._write_lock:
                for name, photo, brand, product, label, source in rows[start : start + step]:
                    try:
                        brand, product = clean_name(brand, "brand"), clean_name(product, "product")
                        if label not in LABELS:
                            raise RequestRejected(f"unknown label {label!r}")
                        decoded = self.decode(photo)
                        key = (brand, product, decoded.sha256)
                        existing = self.catalog.find_duplicate(*key)
                        if existing is not None and existing.label != label:
                            raise RequestRejected(str(DuplicateLabelConflict(existing)), 409)
                        if key in seen and seen[key] != label:
                            raise RequestRejected(f"the same image is listed earlier as {seen[key]} for {brand}/{product}", 409)
                        if existing is not None or key in seen:
                            summary.duplicates += 1
                            continue
                        seen[key] = label
                        new = NewImage(
                            brand,
                            product,
                            label,
                            decoded.sha256,
                            decoded.media_type,
                            decoded.width,
                            decoded.height,
                            source,
                        )
                        batch.append((new, decoded, photo.data))
                    except (ImageRejected, RequestRejected) as exc:
                        summary.errors.append((name, str(exc)))
                if batch:
                    vectors = self.embedder.embed_images([decoded.image for _, decoded, _ in batch])
                    for new, _, data in batch:
                        self.blobs.put(new.sha256, data)
                    self._commit([new for new, _, _ in batch], vectors)
                    summary.added += len(batch)
            bar.update(min(step, len(rows) - start))
        bar.close()
        return summary

    def delete_reference(self, image_id: str) -> ImageRef | None:
        with self._write_lock:
            deleted = self.catalog.delete_image(image_id)
            if deleted is None:
                return None
            ref, blob_unused = deleted
            self.index.remove(np.array([ref.key], dtype=np.int64))
            self._refs.pop(ref.key, None)
            self._catalog_changed()
            self.index.revision = self.catalog.revision()
            self._dirty = True
            if blob_unused:  # inside the lock: an upload of the same bytes cannot slip in between
                self.blobs.delete(ref.sha256)
        return ref

    # --- scanning ---------------------------------------------------------------------------------------------
    def _scope(self, brand: str | None, product: str | None) -> np.ndarray | None:
        """Index keys a scan restricted to `brand`/`product` may match; cached until the catalog changes."""
        if brand is None and product is None:
            return None
        generation = self._generation
        cached = self._scopes.get((brand, product))
        if cached is not None and cached[0] == generation:
            return cached[1]
        refs = tuple(self._refs.items())  # snapshot: writers may change the dict meanwhile
        keys = [k for k, ref in refs if (brand is None or ref.brand == brand) and (product is None or ref.product == product)]
        scope = np.array(keys, dtype=np.int64)
        self._scopes[(brand, product)] = (generation, scope)
        return scope

    def scan(
        self,
        photos: Sequence[PhotoInput],
        brand: str | None = None,
        product: str | None = None,
        listing_id: str | None = None,
        record: bool = True,
    ) -> dict[str, Any]:
        """Scan one listing's photos against the catalog; returns (and records) the scan result."""
        if not photos:
            raise RequestRejected("send at least one photo in the 'images' field", 400)
        limit = self.settings.max_photos_per_scan
        if len(photos) > limit:
            raise RequestRejected(f"{len(photos)} photos sent; a scan takes at most {limit}", 400)
        brand = clean_name(brand, "brand") if brand else None
        product = clean_name(product, "product") if product else None
        if listing_id is not None and len(listing_id) > MAX_NAME_LENGTH:
            raise RequestRejected(f"listing_id is longer than {MAX_NAME_LENGTH} characters", 422)
        decoded: list[DecodedImage] = []
        for number, photo in enumerate(photos, start=1):
            try:
                decoded.append(self.decode(photo))
            except ImageRejected as exc:
                name = f" ({photo.filename})" if photo.filename else ""
                raise ImageRejected(f"photo {number}{name}: {exc}", exc.status) from exc
        vectors = self.embedder.embed_images([d.image for d in decoded])
        return self.score_vectors(vectors, [d.sha256 for d in decoded], brand, product, listing_id, record)

    def score_vectors(
        self,
        vectors: np.ndarray,
        sha256s: Sequence[str],
        brand: str | None,
        product: str | None,
        listing_id: str | None,
        record: bool = True,
    ) -> dict[str, Any]:
        index, refs = self.index, self._refs
        index_version = index.version
        hits = index.search(vectors, self.settings.top_k, self._scope(brand, product))
        photo_matches = [
            [
                Match(ref.image_id, ref.brand, ref.product, ref.label, hit.similarity)
                for hit in row
                if (ref := refs.get(hit.id)) is not None
            ]
            for row in hits
        ]
        score = score_listing(photo_matches, self.scoring)
        reasons = list(score.reasons)
        if brand or product:
            scope = "/".join(x for x in (brand, product) if x)
            scope_keys = self._scope(brand, product)
            if scope_keys is not None and len(scope_keys) == 0:
                reasons.insert(0, f"the catalog has no reference images for {scope}")
        if self.embedder.info.random_weights:
            reasons.insert(0, "the model has random weights (test configuration): these scores are meaningless")
        created_at = datetime.now(UTC)
        result: dict[str, Any] = {
            "scan_id": new_scan_id(),
            "listing_id": listing_id,
            "created_at": created_at.isoformat(),
            "risk": None if score.risk is None else round(score.risk, 6),
            "verdict": score.verdict,
            "calibrated": False,
            "brand": brand,
            "product": product,
            "model": self.embedder.info.as_dict(),
            "index_version": index_version,
            "images": [
                {
                    "sha256": sha,
                    "risk": None if photo.risk is None else round(photo.risk, 6),
                    "in_catalog": photo.in_catalog,
                    "nearest_authentic": photo.nearest_authentic,
                    "nearest_counterfeit": photo.nearest_counterfeit,
                    "matches": [m.as_dict() for m in photo.matches],
                }
                for sha, photo in zip(sha256s, score.photos, strict=True)
            ],
            "reasons": reasons,
        }
        if record:
            self.scans.save(result, created_at, self.embedder.info.fingerprint)
        return result

    def _catalog_changed(self) -> None:
        # Bump first, so a scope computed from the old refs can never be taken as current.
        self._generation += 1
        self._scopes.clear()

    def close(self) -> None:
        self.save_index_if_dirty()
        self.db.dispose()
