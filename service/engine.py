"""ScanEngine: the model, the catalog and the index behind both the HTTP service and the CLI."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from embeddings import DecodedImage, ImageEmbedder, ImageRejected, ModelSpec, VectorIndex, decode_image, load_embedder
from embeddings.authenticity import HeadSet
from embeddings.embedder import Embeddings
from embeddings.index import IndexHit
from embeddings.perceptual_hash import perceptual_hash
from reference_catalog import LABELS, AuditLog, BlobStore, CatalogRepository, ImageRef, NewImage, create_catalog_engine
from reference_catalog.repository import DetailFeatures, DuplicateLabelConflict
from reference_catalog.text import NOTE_ALLOWED, control_character
from service.access.api_keys import ApiKeyStore
from service.api.errors import RequestRejected
from service.catalog.near_duplicates import NearDuplicateTable
from service.config import Settings
from service.models.authenticity_heads import HeadKeeper, head_opinion
from service.models.calibration import CalibratorError, LoadedCalibrator, calibrator_path, load_calibrator
from service.models.registry import ModelRegistry
from service.scanning.brand_views import brand_view, view_scoring
from service.scanning.feedback import FeedbackStore
from service.scanning.photo_prep import PhotoInput, decode_listing, decode_photo
from service.scanning.records import BrandViews, ScanRecordStore, concerned_brands, new_scan_id
from service.scanning.scoring import (
    FEATURES,
    Match,
    NearDuplicate,
    PhotoEvidence,
    ScoringParams,
    photo_result,
    rounded,
    score_listing,
)

log = logging.getLogger(__name__)

DEFAULT_MATCH_THRESHOLD = 0.5
MAX_NAME_LENGTH = 200
MAX_SOURCE_LENGTH = 500
MAX_NOTE_LENGTH = 2000


@dataclass(frozen=True)
class ServingModel:
    """The model a scan runs on, with its index, calibrator, scoring parameters and authenticity heads."""

    embedder: ImageEmbedder
    index: VectorIndex
    calibrator: LoadedCalibrator | None
    scoring: ScoringParams
    heads: HeadSet | None = None


@dataclass(frozen=True)
class AddedImage:
    ref: ImageRef
    created: bool
    index_version: str


class ImportRow(NamedTuple):
    """One photo to import: the row's name (for errors), its bytes and what it is; `group` is its photo shoot."""

    name: str
    photo: PhotoInput
    brand: str
    product: str
    label: str
    source: str | None
    group: str | None = None


@dataclass
class ImportSummary:
    added: int = 0
    duplicates: int = 0
    errors: list[tuple[str, str]] | None = None


def check_text(value: str, field: str, max_length: int, allowed: str = "") -> str:
    """`value` if it is at most `max_length` characters and holds no control character but those in `allowed`
    (`reference_catalog.text.control_character`); else RequestRejected (422), which names the character escaped."""
    if len(value) > max_length:
        raise RequestRejected(f"{field} is longer than {max_length} characters", 422)
    bad = control_character(value, allowed)
    if bad:
        raise RequestRejected(f"{field} contains control characters ({bad})", 422)
    return value


def clean_name(value: str | None, field: str) -> str:
    """Validate a brand or product name: non-empty, bounded, printable."""
    text = (value or "").strip()
    if not text:
        raise RequestRejected(f"{field} is required", 422)
    return check_text(text, field, MAX_NAME_LENGTH)


def clean_id(value: str | None, field: str) -> str | None:
    """An optional identifier (a listing_id): None when empty; bounded and printable, kept as given."""
    return check_text(value, field, MAX_NAME_LENGTH) if value else None


def clean_source(value: str | None, field: str = "source") -> str | None:
    """An optional provenance (a reference image's source, its photo shoot): None when empty; bounded, printable."""
    return check_text(value, field, MAX_SOURCE_LENGTH) if value else None


def clean_note(value: str | None) -> str | None:
    """A reviewer's free-text note: may hold line breaks and tabs, no other control character (NUL, ESC, ...)."""
    return check_text(value, "note", MAX_NOTE_LENGTH, NOTE_ALLOWED) if value else None


class ScanEngine:
    def __init__(self, settings: Settings, embedder: ImageEmbedder) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = create_catalog_engine(settings.resolved_database_url)
        self.catalog = CatalogRepository(self.db)
        self.catalog.create_schema()
        self.scans = ScanRecordStore(self.db)
        self.feedback = FeedbackStore(self.db)
        self.keys = ApiKeyStore(self.db, settings.api_key_cache_s)
        self.audit = AuditLog(self.db)
        self.blobs = BlobStore(settings.blob_dir)
        self.scan_photos = BlobStore(settings.data_dir / "scan_photos")
        self.registry = ModelRegistry(settings.data_dir)
        self.near_duplicates = NearDuplicateTable()
        self.heads = HeadKeeper(settings, self.catalog)
        # Everything a scan needs from the model, replaced as one value so that a switch is atomic.
        self.model = ServingModel(embedder, self._new_index(embedder), None, self._scoring_for(embedder))
        self._refs: dict[int, ImageRef] = {}
        self._scopes: dict[tuple[str | None, str | None], tuple[int, np.ndarray]] = {}
        self._generation = 0
        self._write_lock = threading.RLock()
        self._dirty = False
        # Called with an image file's sha256 once the file is deleted, to drop what was derived from it (thumbnails).
        self.blob_deleted: list[Callable[[str], None]] = []

    @classmethod
    def open(cls, settings: Settings, show_progress: bool = False, fit_heads: bool = True) -> ScanEngine:
        """Load the model (the activated one, if any), the catalog and the index, repairing a stale index."""
        active = ModelRegistry(settings.data_dir).active()
        spec = serving_spec(settings)
        if active:
            log.warning("serving %s, activated %s (%s); the model settings apply again after `model rollback` "
                        "past it or removing that file", active.weights, active.activated_at,
                        settings.data_dir / "models" / "active.json")  # fmt: skip
        embedder = load_embedder(spec, settings.export_dir)
        engine = cls(settings, embedder)
        engine.sync_index(show_progress)
        engine.refresh_heads(fit_heads)  # a service passes False: readiness need not wait for a fit
        engine.refresh_calibrator()
        engine.collect_orphan_blobs()
        return engine

    def collect_orphan_blobs(self, min_age_s: float = 3600.0) -> int:
        """Delete image files no catalog row references (a write that crashed before its commit) and stale temp
        files. Only files older than `min_age_s`, so that a write in flight in another process is never touched."""
        with self._write_lock:
            referenced = self.catalog.referenced_sha256s()
            cutoff = time.time() - min_age_s
            removed = 0
            for path in self.blobs.files():
                if path.name not in referenced and path.stat().st_mtime < cutoff:
                    path.unlink(missing_ok=True)
                    removed += 1
        if removed:
            log.info("removed %d orphaned blob files", removed)
        return removed

    def _scoring_for(self, embedder: ImageEmbedder) -> ScoringParams:
        threshold = self.settings.match_threshold
        if threshold is None:
            threshold = embedder.default_match_threshold or DEFAULT_MATCH_THRESHOLD
        return ScoringParams(
            match_threshold=threshold,
            counterfeit_threshold=self.settings.counterfeit_threshold,
            authentic_threshold=self.settings.authentic_threshold,
            vote_temperature=self.settings.vote_temperature,
        )

    @property
    def embedder(self) -> ImageEmbedder:
        return self.model.embedder

    @property
    def index(self) -> VectorIndex:
        return self.model.index

    @property
    def scoring(self) -> ScoringParams:
        return self.model.scoring

    @property
    def calibrator(self) -> LoadedCalibrator | None:
        return self.model.calibrator

    @calibrator.setter
    def calibrator(self, calibrator: LoadedCalibrator | None) -> None:
        self.model = replace(self.model, calibrator=calibrator)

    # --- calibration ----------------------------------------------------------------------------------------
    def calibrator_path_for(self, fingerprint: str) -> Path:
        return calibrator_path(self.settings.data_dir / "calibration", fingerprint)

    @property
    def calibrator_path(self) -> Path:
        return self.calibrator_path_for(self.embedder.info.fingerprint)

    def _load_calibrator(self, fingerprint: str) -> LoadedCalibrator | None:
        try:
            return load_calibrator(self.calibrator_path_for(fingerprint), fingerprint, FEATURES)
        except CalibratorError as exc:
            log.error("not using calibrator: %s", exc)
            return None

    def refresh_calibrator(self) -> None:
        """Load (or reload, when the file changed) the calibrator fitted for this model."""
        model = self.model
        path = self.calibrator_path_for(model.embedder.info.fingerprint)
        current = model.calibrator
        if current is not None and path.is_file() and path.stat().st_mtime == current.mtime:
            return
        calibrator = self._load_calibrator(model.embedder.info.fingerprint)
        if calibrator is None and current is not None and path.is_file():
            return  # keep the one that works rather than a broken replacement
        with self._write_lock:
            if self.model.embedder is model.embedder:
                self.calibrator = calibrator
        if calibrator is not None and calibrator is not current:
            log.info("risk is calibrated (%s, fitted %s)", calibrator.spec["method"], calibrator.spec.get("fitted_at"))

    # --- models: prepare in the background, switch atomically -----------------------------------------------
    def prepare(self, spec: ModelSpec, show_progress: bool = False) -> ServingModel:
        """Load a model and build its index from the catalog (stored vectors, embedding what is missing).

        Runs beside the serving model; `activate` then switches to it. Raises ModelLoadError.
        """
        embedder = load_embedder(spec, self.settings.export_dir)
        index = self._load_saved_index(embedder) or self._new_index(embedder)
        with self._write_lock:
            revision, refs = self.catalog.revision(), dict(self._refs)
        self._repair(index, embedder, refs, revision, show_progress)
        index.refit()
        index.save(self.index_path_for(embedder.info.fingerprint))
        heads = self._heads_at(embedder, refs, revision)
        calibrator = self._load_calibrator(embedder.info.fingerprint)
        return ServingModel(embedder, index, calibrator, self._scoring_for(embedder), heads)

    def activate(self, model: ServingModel) -> None:
        """Switch to a prepared model: catch up with catalog writes made meanwhile, then swap in one assignment."""
        with self._write_lock:
            self._repair(model.index, model.embedder, dict(self._refs), self.catalog.revision(), False)
            self.save_index_if_dirty()
            self.model = model
            self._dirty = True
            self.save_index()
        log.info("now serving %s with index %s", model.embedder.info.short_id, model.index.version)

    # --- authenticity heads: fitted off the write lock, swapped in with one assignment -------------------------
    def _heads_at(self, embedder: ImageEmbedder, refs: dict[int, ImageRef], revision: int, fit: bool = True) -> HeadSet | None:
        """Saved heads for this catalog revision, else fitted now (detail features embedded where missing); with
        `fit` False, the saved heads whatever revision they were fitted at (or None), leaving the fit to later."""
        if not self.heads.enabled:
            return None
        saved = self.heads.load(embedder)
        if saved is not None and (saved.catalog_revision == revision or not fit):
            return saved
        if not fit:
            return None
        self._fill_details(embedder, refs)
        return self.heads.fit(embedder, refs, revision)

    def refresh_heads(self, fit: bool = True) -> HeadSet | None:
        """Bring the serving model's heads up to the catalog it serves (at start, and in the background); with `fit`
        False, take the saved ones as they are (a service starting up: its background fitter catches up)."""
        model = self.model
        with self._write_lock:
            refs, revision = dict(self._refs), model.index.revision
        heads = self._heads_at(model.embedder, refs, revision, fit)
        with self._write_lock:
            if self.model.embedder is model.embedder:
                self.model = replace(self.model, heads=heads)
        return heads

    def refresh_heads_if_due(self) -> bool:
        """Refit the heads when the catalog has changed and settled (`HeadKeeper.due`); returns whether it did."""
        if not self.heads.due(self.index.revision, self.model.heads):
            return False
        self.refresh_heads()
        return True

    def _fill_details(self, embedder: ImageEmbedder, refs: dict[int, ImageRef]) -> None:
        """Embed the catalog images that have no detail features for this model yet (catalogs made before them)."""
        keys, _ = self.catalog.stored_details(embedder.info.fingerprint, embedder.detail_layout, embedder.detail_dim)
        missing = sorted(set(refs) - set(keys.tolist()))
        if not missing:
            return
        log.info("computing detail features of %d catalog images with %s", len(missing), embedder.info.short_id)
        for start in range(0, len(missing), 64):
            chunk = [refs[k] for k in missing[start : start + 64]]
            images = [self._decode_stored(ref, embedder.input_size) for ref in chunk]
            out = embedder.embed_images_with_detail(images)
            self.catalog.store_details(embedder.info.fingerprint, embedder.detail_layout, [r.key for r in chunk], out.details)

    # --- index lifecycle ------------------------------------------------------------------------------------
    def index_path_for(self, fingerprint: str) -> Path:
        return self.settings.index_dir / f"{fingerprint[:16]}.faiss"

    @property
    def index_path(self) -> Path:
        return self.index_path_for(self.embedder.info.fingerprint)

    def _new_index(self, embedder: ImageEmbedder) -> VectorIndex:
        """An empty index for `embedder`; its kind follows the catalog's size (`VectorIndex.refit`)."""
        return VectorIndex(embedder.info.dim, embedder.info.fingerprint, options=self.settings.index_options())

    def sync_index(self, show_progress: bool = False) -> None:
        """Make the in-memory index agree with the catalog: load the saved one, then add/drop what differs."""
        with self._write_lock:
            embedder = self.embedder
            revision = self.catalog.revision()
            self._refs = {ref.key: ref for ref in self.catalog.all_images()}
            self._catalog_changed()
            self._sync_hashes()
            saved = self._load_saved_index(embedder)
            index = saved or self._new_index(embedder)
            changed = self._repair(index, embedder, self._refs, revision, show_progress)
            changed = index.refit() or changed  # flat <-> ivf by size, ivf retrained once it doubled
            self.model = replace(self.model, index=index)
            if changed or saved is None:
                self.save_index()

    def follow_catalog(self) -> bool:
        """Pick up catalog changes made by another process (e.g. `catalog import` beside a running service)."""
        if self.catalog.revision() == self.index.revision:
            return False
        with self._write_lock:  # look again: a write in this process may have been between its commit and index update
            if self.catalog.revision() == self.index.revision:
                return False
        log.info("catalog changed outside this process (revision %d, index at %d): syncing",
                 self.catalog.revision(), self.index.revision)  # fmt: skip
        self.sync_index()
        return True

    def _repair(
        self, index: VectorIndex, embedder: ImageEmbedder, refs: dict[int, ImageRef], revision: int, show_progress: bool
    ) -> bool:
        """Drop vectors of deleted images, add stored ones, embed the rest; returns whether anything changed."""
        catalog_keys = set(refs)
        indexed = set(index.ids().tolist())
        if index.revision == revision and indexed == catalog_keys:
            return False
        info = embedder.info
        index.remove(np.fromiter(indexed - catalog_keys, dtype=np.int64))
        missing = catalog_keys - indexed
        keys, vectors = self.catalog.stored_vectors(info.fingerprint, info.dim)
        if len(keys):
            # Re-add every stored vector, not only the missing ones: an integer key reused by SQLite databases made
            # before AUTOINCREMENT could otherwise keep a deleted image's vector under a new image's key.
            keep = np.isin(keys, np.fromiter(catalog_keys, dtype=np.int64))
            index.add(keys[keep], vectors[keep])
        to_embed = sorted(missing - set(keys.tolist()))
        if to_embed:
            log.info("embedding %d catalog images with %s", len(to_embed), info.short_id)
            self._embed_stored(embedder, index, [refs[k] for k in to_embed], show_progress)
        index.revision = revision
        return True

    def _sync_hashes(self) -> None:
        """Load perceptual hashes, computing those missing (catalogs written before hashes existed)."""
        keys, hashes = self.catalog.perceptual_hashes()
        missing = sorted(set(self._refs) - set(keys.tolist()))
        if missing:
            computed = [perceptual_hash(self._decode_stored(self._refs[k], None)) for k in missing]
            self.catalog.store_hashes(missing, computed)
            keys, hashes = self.catalog.perceptual_hashes()
        self.near_duplicates.replace(keys, hashes)

    def _load_saved_index(self, embedder: ImageEmbedder) -> VectorIndex | None:
        path = self.index_path_for(embedder.info.fingerprint)
        if not path.is_file():
            return None
        try:
            index = VectorIndex.load(path, self.settings.index_options())
        except (OSError, ValueError, RuntimeError) as exc:
            log.warning("ignoring unreadable index file %s: %s", path, exc)
            return None
        if index.fingerprint != embedder.info.fingerprint or index.dim != embedder.info.dim:
            return None
        return index

    def _embed_stored(self, embedder: ImageEmbedder, index: VectorIndex, refs: Sequence[ImageRef], show_progress: bool) -> None:
        step = 64
        bar = tqdm(total=len(refs), desc="embedding catalog", unit="img", disable=not show_progress)
        for start in range(0, len(refs), step):
            chunk = refs[start : start + step]
            images = [self._decode_stored(ref, embedder.input_size) for ref in chunk]
            out = embedder.embed_images_with_detail(images)
            keys = np.array([ref.key for ref in chunk], dtype=np.int64)
            self.catalog.store_vectors(embedder.info.fingerprint, keys.tolist(), out.vectors)
            self.catalog.store_details(embedder.info.fingerprint, embedder.detail_layout, keys.tolist(), out.details)
            index.add(keys, out.vectors)
            bar.update(len(chunk))
        bar.close()

    def _decode_stored(self, ref: ImageRef, size: int | None) -> Image.Image:
        return decode_image(self.blobs.get(ref.sha256), self.settings.image_limits(), size).image

    def rebuild_index(self, show_progress: bool = False) -> VectorIndex:
        """Re-embed every catalog image with the current model and replace the index."""
        with self._write_lock:
            embedder = self.embedder
            info = embedder.info
            self.catalog.drop_vectors(info.fingerprint)
            refs = self.catalog.all_images()
            index = self._new_index(embedder)
            self._embed_stored(embedder, index, refs, show_progress)
            index.refit()  # the kind this catalog's size calls for (embedded into flat, then built)
            index.revision = self.catalog.revision()
            self._refs = {ref.key: ref for ref in refs}
            self._catalog_changed()
            self.model = replace(self.model, index=index)
            self.save_index()
            return index

    def refit_index(self) -> bool:
        """Give a running service's index the kind its catalog's size now calls for (flat <-> ivf, retrained once it
        doubled, stale codes dropped): refitted on a copy while scans go on searching the serving index, which then
        hands over what changed meanwhile and is swapped out in one assignment. Returns whether it was swapped."""
        serving = self.index
        if not serving.needs_refit():
            return False
        started = time.perf_counter()
        fresh = serving.copy()
        fresh.refit()
        with self._write_lock:
            if self.index is not serving:  # a model switch or rebuild replaced it meanwhile
                return False
            caught_up = fresh.catch_up(serving)
            self.model = replace(self.model, index=fresh)
            self._dirty = True
        log.info("index refitted while serving in %.1f s (%d changes caught up): %s",
                 time.perf_counter() - started, caught_up, fresh.describe())  # fmt: skip
        return True

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
    def decode(self, photo: PhotoInput, draft_size: int | None = None) -> DecodedImage:
        """Check the declared type and decode; JPEGs decode straight to about `draft_size` (the model's input)."""
        return decode_photo(
            photo, self.settings.image_limits(), draft_size if draft_size is not None else self.embedder.input_size
        )

    # --- catalog writes ------------------------------------------------------------------------------------
    def add_reference(
        self,
        photo: PhotoInput,
        brand: str,
        product: str,
        label: str,
        source: str | None = None,
        actor: str = "system",
        group: str | None = None,
    ) -> AddedImage:
        """Add one reference image; it is searchable when this returns. Nothing is written if it is rejected."""
        brand, product = clean_name(brand, "brand"), clean_name(product, "product")
        if label not in LABELS:
            raise RequestRejected(f"label must be one of {', '.join(LABELS)}, not {label!r}", 422)
        if source is not None:
            check_text(source, "source", MAX_SOURCE_LENGTH)
        decoded = self.decode(photo)
        new = _new_image(decoded, brand, product, label, source, group)
        with self._write_lock:
            existing = self.catalog.find_duplicate(brand, product, decoded.sha256)
            if existing is not None:
                if existing.label != label:
                    raise RequestRejected(str(DuplicateLabelConflict(existing)), 409)
                return AddedImage(existing, False, self.index.version)
            embedded = self.embedder.embed_images_with_detail([decoded.image])
            self.blobs.put(decoded.sha256, photo.data)
            ((ref, created),) = self._commit_rows([new], embedded, actor)  # False: another process added it meanwhile
            return AddedImage(ref, created, self.index.version)

    def _commit_rows(self, images: Sequence[NewImage], embedded: Embeddings, actor: str) -> list[tuple[ImageRef, bool]]:
        """Write rows, vectors, detail features and audit entries in one transaction, then make them searchable; for
        each row its ref and whether it was written now (False: another writer had added it meanwhile)."""
        embedder, vectors = self.embedder, embedded.vectors
        details = DetailFeatures(embedder.detail_layout, embedded.details)
        written = self.catalog.insert_images(images, vectors, embedder.info.fingerprint, actor, details)
        refs = [ref for ref, _ in written]
        fresh = [(i, ref) for i, ref in enumerate(refs) if ref.key not in self._refs]
        if fresh:
            rows = [i for i, _ in fresh]
            self.index.add(np.array([ref.key for _, ref in fresh], dtype=np.int64), vectors[rows])
            for i, ref in fresh:
                self._refs[ref.key] = ref
                if images[i].phash is not None:
                    self.near_duplicates.add(ref.key, images[i].phash or 0)
        self.index.revision = self.catalog.revision()
        self._catalog_changed()
        self._dirty = True
        return written

    def _commit_counted(
        self, images: Sequence[NewImage], embedded: Embeddings, actor: str, names: Sequence[str], summary: ImportSummary
    ) -> None:
        """Commit a batch and count what was written; when another writer added one of its photos under the other
        label meanwhile, commit row by row so that only that row fails (reported with its name)."""
        try:
            written = self._commit_rows(images, embedded, actor)
        except DuplicateLabelConflict:
            if len(images) == 1:
                raise
            for i, name in enumerate(names):
                try:
                    self._commit_counted([images[i]], embedded.rows(i, i + 1), actor, [name], summary)
                except DuplicateLabelConflict as exc:
                    assert summary.errors is not None
                    summary.errors.append((name, str(exc)))
            return
        created = sum(1 for _, was_created in written if was_created)
        summary.added += created
        summary.duplicates += len(written) - created

    def import_rows(
        self,
        rows: Sequence[ImportRow],
        show_progress: bool = False,
        actor: str = "system",
    ) -> ImportSummary:
        """Import rows (`ImportRow`); bad rows are reported, good ones kept."""
        summary = ImportSummary(errors=[])
        assert summary.errors is not None
        bar = tqdm(total=len(rows), desc="importing", unit="img", disable=not show_progress)
        step = 32
        for start in range(0, len(rows), step):
            batch: list[tuple[NewImage, DecodedImage, bytes]] = []
            names: list[str] = []
            seen: dict[tuple[str, str, str], str] = {}
            with self._write_lock:
                for name, photo, brand, product, label, source, group in rows[start : start + step]:
                    try:
                        brand, product = clean_name(brand, "brand"), clean_name(product, "product")
                        if label not in LABELS:
                            raise RequestRejected(f"unknown label {label!r}")
                        source, group = clean_source(source, "source"), clean_source(group, "group")
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
                        new = _new_image(decoded, brand, product, label, source, group)
                        batch.append((new, decoded, photo.data))
                        names.append(name)
                    except (ImageRejected, RequestRejected) as exc:
                        summary.errors.append((name, str(exc)))
                if batch:
                    embedded = self.embedder.embed_images_with_detail([decoded.image for _, decoded, _ in batch])
                    for new, _, data in batch:
                        self.blobs.put(new.sha256, data)
                    # Another writer (an HTTP upload, another process) may have added some rows since the checks
                    # above: those were not written here, so they count as duplicates, not as added.
                    self._commit_counted([new for new, _, _ in batch], embedded, actor, names, summary)
            bar.update(min(step, len(rows) - start))
        bar.close()
        return summary

    def relabel_reference(self, image_id: str, label: str, actor: str = "system") -> ImageRef | None:
        """Change a reference image's label (None: no such image); the next scan sees the new label."""
        if label not in LABELS:
            raise RequestRejected(f"label must be one of {', '.join(LABELS)}, not {label!r}", 422)
        with self._write_lock:
            changed = self.catalog.relabel_image(image_id, label, actor)
            if changed is None:
                return None
            ref, relabelled = changed
            if relabelled:
                # Scans read labels from these refs (the index holds only vectors), so the new label counts at once.
                self._refs[ref.key] = ref
                self._catalog_changed()
                self.index.revision = self.catalog.revision()
                self._dirty = True
        return ref

    def delete_reference(self, image_id: str, actor: str = "system") -> ImageRef | None:
        with self._write_lock:
            deleted = self.catalog.delete_image(image_id, actor)
            if deleted is None:
                return None
            ref, blob_unused = deleted
            self.index.remove(np.array([ref.key], dtype=np.int64))
            self.near_duplicates.remove(ref.key)
            self._refs.pop(ref.key, None)
            self._catalog_changed()
            self.index.revision = self.catalog.revision()
            self._dirty = True
            if blob_unused:  # inside the lock: an upload of the same bytes cannot slip in between
                self.blobs.delete(ref.sha256)
                for listener in self.blob_deleted:
                    listener(ref.sha256)
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
        actor: str = "system",
    ) -> dict[str, Any]:
        """Scan one listing's photos against the catalog; returns (and records) the scan result."""
        brand, product = self.check_scan(photos, brand, product, listing_id)
        model = self.model  # one snapshot: a model switch meanwhile does not mix versions within this scan
        decoded = self._decode_listing(photos, model.embedder.input_size)
        embedded = model.embedder.embed_images_with_detail([d.image for d in decoded])
        result = self._score_decoded(embedded, decoded, brand, product, listing_id, model)
        if record:
            self._record(result, photos, actor)
        return result

    def check_scan(
        self, photos: Sequence[PhotoInput], brand: str | None, product: str | None, listing_id: str | None
    ) -> tuple[str | None, str | None]:
        """Validate a scan request before any work (photo count, names); returns the cleaned brand and product."""
        if not photos:
            raise RequestRejected("send at least one photo in the 'images' field", 400)
        limit = self.settings.max_photos_per_scan
        if len(photos) > limit:
            raise RequestRejected(f"{len(photos)} photos sent; a scan takes at most {limit}", 400)
        brand = clean_name(brand, "brand") if brand else None
        product = clean_name(product, "product") if product else None
        clean_id(listing_id, "listing_id")  # echoed in the answer and stored: printable only
        return brand, product

    def _decode_listing(self, photos: Sequence[PhotoInput], draft_size: int) -> list[DecodedImage]:
        return decode_listing(photos, self.settings.image_limits(), draft_size)

    def scan_many(
        self, listings: Sequence[Sequence[PhotoInput]], show_progress: bool = False, batch_photos: int = 64
    ) -> list[dict[str, Any] | ImageRejected]:
        """Scan many listings without recording them (evaluation, calibration), embedding photos in big batches.

        A listing whose photo cannot be decoded yields its ImageRejected instead of a result.
        """
        results: list[dict[str, Any] | ImageRejected] = []
        model = self.model
        bar = tqdm(total=sum(len(x) for x in listings), desc="scanning", unit="photo", disable=not show_progress)
        start = 0
        while start < len(listings):
            chunk: list[Sequence[PhotoInput]] = []
            size = 0
            while start + len(chunk) < len(listings) and (not chunk or size + len(listings[start + len(chunk)]) <= batch_photos):
                size += len(listings[start + len(chunk)])
                chunk.append(listings[start + len(chunk)])
            decoded: list[list[DecodedImage] | ImageRejected] = []
            for photos in chunk:
                try:
                    decoded.append(self._decode_listing(photos, model.embedder.input_size))
                except ImageRejected as exc:
                    decoded.append(exc)
            flat = [d for item in decoded if not isinstance(item, ImageRejected) for d in item]
            embedded = model.embedder.embed_images_with_detail([d.image for d in flat])
            offset = 0
            for item in decoded:
                if isinstance(item, ImageRejected):
                    results.append(item)
                    continue
                rows = embedded.rows(offset, offset + len(item))
                results.append(self._score_decoded(rows, item, None, None, None, model))
                offset += len(item)
            bar.update(size)
            start += len(chunk)
        bar.close()
        return results

    def search(
        self, index: VectorIndex, vectors: np.ndarray, brand: str | None, product: str | None
    ) -> tuple[list[list[IndexHit]], str]:
        """One index search for photos that share a brand/product scope: top-k hits per row, and the index version."""
        index_version = index.version
        return index.search(vectors, self.settings.top_k, self._scope(brand, product)), index_version

    def _evidence(
        self,
        model: ServingModel,
        embedded: Embeddings,
        phashes: Sequence[int],
        brand: str | None,
        product: str | None,
        searched: tuple[Sequence[Sequence[IndexHit]], str] | None = None,
    ) -> tuple[list[PhotoEvidence], str]:
        refs = self._refs
        scope = self._scope(brand, product)
        allowed = None if scope is None else set(scope.tolist())
        hits, index_version = searched or self.search(model.index, embedded.vectors, brand, product)
        evidence = []
        for row, phash, details in zip(hits, phashes, embedded.details, strict=True):
            matches = [
                Match(ref.image_id, ref.brand, ref.product, ref.label, hit.similarity)
                for hit in row
                if (ref := refs.get(hit.id)) is not None
            ]
            duplicates = [
                NearDuplicate(ref.image_id, ref.brand, ref.product, ref.label, distance)
                for key, distance in self.near_duplicates.find(phash, self.settings.near_duplicate_max_bits)
                if (ref := refs.get(key)) is not None and (allowed is None or key in allowed)
            ]
            top = matches[0] if matches else None
            head = head_opinion(
                model.heads, details, brand or (top.brand if top else None), product or (top.product if top else None)
            )
            evidence.append(PhotoEvidence(matches, duplicates, head))
        return evidence, index_version

    def _score_decoded(
        self,
        embedded: Embeddings,
        decoded: Sequence[DecodedImage],
        brand: str | None,
        product: str | None,
        listing_id: str | None,
        model: ServingModel,
    ) -> dict[str, Any]:
        sha256s = [d.sha256 for d in decoded]
        phashes = [perceptual_hash(d.image) for d in decoded]
        return self.score_photos(embedded, sha256s, phashes, brand, product, listing_id, model)

    def score_photos(
        self,
        embedded: Embeddings,
        sha256s: Sequence[str],
        phashes: Sequence[int],
        brand: str | None,
        product: str | None,
        listing_id: str | None,
        model: ServingModel | None = None,
        searched: tuple[Sequence[Sequence[IndexHit]], str] | None = None,
    ) -> dict[str, Any]:
        """Search, score and describe one listing whose photos (their SHA-256 and perceptual hashes) were embedded by
        `model` (default: the current one). `searched` (`search`'s answer for the vectors) may come precomputed, as the
        micro-batcher searches for many listings at once.
        """
        model = model or self.model
        evidence, index_version = self._evidence(model, embedded, phashes, brand, product, searched)
        calibrator = model.calibrator
        score = score_listing(
            evidence, model.scoring, calibrator, self.heads.missing_reason(model.heads, model.index.revision, evidence, brand)
        )
        reasons = [reason.as_dict() for reason in score.reasons]
        scope_keys = self._scope(brand, product)
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
        return {
            "scan_id": new_scan_id(),
            "listing_id": listing_id,
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
            "index_version": index_version,
            "authenticity_head": model.heads.summary() if model.heads is not None else None,
            "images": [
                {"sha256": sha256, **photo_result(photo, photo_evidence, calibrator)}
                for sha256, photo, photo_evidence in zip(sha256s, score.photos, evidence, strict=True)
            ],
            "reasons": reasons,
            "photos_kept": False,
        }

    def _record(self, result: dict[str, Any], photos: Sequence[PhotoInput], actor: str = "system") -> None:
        self._record_many([(result, photos, actor)])

    def _record_many(self, scans: Sequence[tuple[dict[str, Any], Sequence[PhotoInput], str]]) -> None:
        """Store (result, photos, actor) scans in one transaction; keep their photos when the policy says so, so that
        feedback can add them to the catalog."""
        policy = self.settings.keep_scan_photos
        for result, photos, _ in scans:
            if policy == "all" or (policy == "flagged" and result["verdict"] in ("likely_counterfeit", "needs_review")):
                for image, photo in zip(result["images"], photos, strict=True):
                    self.scan_photos.put(image["sha256"], photo.data)
                result["photos_kept"] = True
        records = [(r, datetime.fromisoformat(r["created_at"]), r["model"]["fingerprint"], actor) for r, _, actor in scans]
        self.scans.save_many(records, {r["scan_id"]: views for r, _, _ in scans if (views := self._brand_views(r))})

    def _brand_views(self, result: dict[str, Any]) -> BrandViews:
        """Each brand's verdict and risk of a scan that concerns several brands, as its review queue will see it."""
        brands = concerned_brands(result)
        if len(brands) < 2:
            return {}
        view = view_scoring(self.model, result)
        seen = {brand: brand_view(result, {brand}, view) for brand in brands}
        return {brand: (str(v["verdict"]), v["risk"]) for brand, v in seen.items()}

    # --- feedback --------------------------------------------------------------------------------------------
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
        from service.scanning.brand_views import stored_evidence  # local: engine.py's imports are shared
        from service.scanning.scoring import score_photo

        note = clean_note(note)
        record = self.scans.get(scan_id)
        access = self.scans.access(scan_id)
        if record is None or access is None:
            raise RequestRejected(f"no scan {scan_id!r}", 404)
        scan_brands = set(access[1])
        brand = clean_name(brand, "brand") if brand else None
        images: list[dict[str, Any]] = record["images"]
        if allowed_brands is None:  # an admin: for the brand given, else for the scan's only brand
            given_for = brand or (next(iter(scan_brands)) if len(scan_brands) == 1 else None)
        else:
            mine = sorted(scan_brands & allowed_brands)
            if brand is not None and brand not in allowed_brands:
                raise RequestRejected("this key gives feedback for, and adds known fakes to, its own brands only", 403)
            if brand is None and len(mine) != 1 and len(allowed_brands) != 1:
                raise RequestRejected("this key covers several brands this scan concerns: say which one with 'brand'", 422)
            given_for = brand or (mine[0] if len(mine) == 1 else next(iter(allowed_brands)))
            # Its own evidence only: another brand's matches neither choose the target nor show up in a message.
            images = [
                {**image, "matches": [m for m in image["matches"] if m["brand"] in allowed_brands],
                 "near_duplicates": [d for d in image["near_duplicates"] if d["brand"] in allowed_brands]}
                for image in images
            ]  # fmt: skip
            if scan_brands - allowed_brands:  # a shared scan: the photos that match this key's brands
                images = [image for image in images if score_photo(stored_evidence(image), self.model.scoring).in_catalog]
                if verdict == "confirmed_counterfeit" and not images:
                    raise RequestRejected(
                        "no photo of this scan matches your brands' reference images closely enough to add it as a known "
                        "fake; add it with POST /v1/catalog/images",
                        422,
                    )
        added: list[str] = []
        index_version: str | None = None
        if verdict == "confirmed_counterfeit":
            with self._write_lock:  # check every photo first, so that a rejected request adds nothing
                plan = [self._feedback_target(record, image, brand, product) for image in images]
                if allowed_brands is not None and {b for _, b, _ in plan} - allowed_brands:
                    raise RequestRejected("this key adds known fakes to its own brands' catalogs only", 403)
                for sha, target_brand, target_product in plan:
                    added_image = self.add_reference(
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

    def _feedback_target(
        self, record: dict[str, Any], image: dict[str, Any], brand: str | None, product: str | None
    ) -> tuple[str, str, str]:
        sha = str(image["sha256"])
        if not record.get("photos_kept") or not self.scan_photos.path(sha).is_file():
            raise RequestRejected(
                "this scan's photos were not kept (COUNTERFEIT_SCAN_KEEP_SCAN_PHOTOS); add them with POST /v1/catalog/images",
                409,
            )
        top = image["matches"][0] if image["matches"] else {}
        target_brand = brand or record.get("brand") or top.get("brand")
        target_product = product or record.get("product") or top.get("product")
        if not target_brand or not target_product:
            raise RequestRejected("the scan matched no product: give brand and product with the feedback", 422)
        target_brand, target_product = clean_name(target_brand, "brand"), clean_name(target_product, "product")
        existing = self.catalog.find_duplicate(target_brand, target_product, sha)
        if existing is not None and existing.label != "counterfeit":
            raise RequestRejected(str(DuplicateLabelConflict(existing)), 409)
        return sha, target_brand, target_product

    def _catalog_changed(self) -> None:
        # Bump first, so a scope computed from the old refs can never be taken as current.
        self._generation += 1
        self._scopes.clear()

    def close(self) -> None:
        self.save_index_if_dirty()
        self.db.dispose()


def serving_spec(settings: Settings) -> ModelSpec:
    """The model a data directory serves: the activated one if any (model activate/rollback), else the settings'."""
    active = ModelRegistry(settings.data_dir).active()
    return active.spec(settings.model_spec()) if active else settings.model_spec()


def _new_image(
    decoded: DecodedImage, brand: str, product: str, label: str, source: str | None, group: str | None = None
) -> NewImage:
    return NewImage(
        brand, product, label, decoded.sha256, decoded.media_type, decoded.width, decoded.height, source,
        perceptual_hash(decoded.image), group or None,
    )  # fmt: skip
