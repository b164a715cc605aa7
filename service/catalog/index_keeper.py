"""Keeps the serving model's vector index, and what scans read beside it, in step with the catalog.

The catalog database is the truth; the index (`embeddings.VectorIndex`, saved per model under `index_dir`) and the
in-memory tables next to it are derived from it and repaired from it: at start (`sync`), after another process
changed the catalog (`follow_catalog`), or from scratch (`rebuild`). Beside the index it keeps the catalog's images by
index key (`refs`: scans read labels from here, the index holding only vectors), each brand/product scope's keys (cached
until the catalog changes) and the perceptual-hash table of near-duplicates. Catalog writes in this process
(service/catalog/writer.py) tell it what they wrote (`added`, `relabelled`, `removed`) under the write lock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from embeddings import ImageEmbedder, VectorIndex, decode_image
from embeddings.perceptual_hash import perceptual_hash
from reference_catalog import BlobStore, CatalogRepository, ImageRef
from service.catalog.near_duplicates import NearDuplicateTable
from service.config import Settings
from service.models.snapshot import ModelSlot

log = logging.getLogger(__name__)

EMBED_CHUNK = 64  # catalog images embedded per forward pass when the index is repaired or rebuilt
Scope = tuple[str | None, str | None]


class IndexKeeper:
    def __init__(self, settings: Settings, catalog: CatalogRepository, blobs: BlobStore, slot: ModelSlot) -> None:
        self.settings = settings
        self.catalog = catalog
        self.blobs = blobs
        self.slot = slot
        self.lock = slot.lock
        self.near_duplicates = NearDuplicateTable()
        self._refs: dict[int, ImageRef] = {}
        self._scopes: dict[Scope, tuple[int, np.ndarray]] = {}
        self._generation = 0
        self._dirty = False

    # --- what scans read ------------------------------------------------------------------------------------------
    @property
    def refs(self) -> dict[int, ImageRef]:
        """The catalog's images by index key (live: read single entries, copy with `refs_copy` to iterate)."""
        return self._refs

    def refs_copy(self) -> dict[int, ImageRef]:
        with self.lock:
            return dict(self._refs)

    def scope(self, brand: str | None, product: str | None) -> np.ndarray | None:
        """Index keys a scan restricted to `brand`/`product` may match (None: any); cached until the catalog changes."""
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

    # --- what catalog writes in this process report (under the write lock) ----------------------------------------
    def added(self, refs: Sequence[ImageRef], vectors: np.ndarray, phashes: Sequence[int | None]) -> None:
        """Rows just committed (`vectors[i]` is `refs[i]`'s); those already known (another writer's) are skipped."""
        fresh = [i for i, ref in enumerate(refs) if ref.key not in self._refs]
        index = self.slot.model.index
        if fresh:
            index.add(np.array([refs[i].key for i in fresh], dtype=np.int64), vectors[fresh])
            for i in fresh:
                self._refs[refs[i].key] = refs[i]
                if phashes[i] is not None:
                    self.near_duplicates.add(refs[i].key, phashes[i] or 0)
        self._changed()

    def relabelled(self, ref: ImageRef) -> None:
        # Scans read labels from these refs (the index holds only vectors), so the new label counts at once.
        self._refs[ref.key] = ref
        self._changed()

    def removed(self, ref: ImageRef) -> None:
        self.slot.model.index.remove(np.array([ref.key], dtype=np.int64))
        self.near_duplicates.remove(ref.key)
        self._refs.pop(ref.key, None)
        self._changed()

    def _changed(self) -> None:
        self._catalog_changed()
        self.slot.model.index.revision = self.catalog.revision()
        self._dirty = True

    def _catalog_changed(self) -> None:
        # Bump first, so a scope computed from the old refs can never be taken as current.
        self._generation += 1
        self._scopes.clear()

    # --- index files ----------------------------------------------------------------------------------------------
    def index_path_for(self, fingerprint: str) -> Path:
        return self.settings.index_dir / f"{fingerprint[:16]}.faiss"

    @property
    def index_path(self) -> Path:
        return self.index_path_for(self.slot.model.embedder.info.fingerprint)

    @staticmethod
    def empty_index(settings: Settings, embedder: ImageEmbedder) -> VectorIndex:
        """An empty index for `embedder`; its kind follows the catalog's size (`VectorIndex.refit`)."""
        return VectorIndex(embedder.info.dim, embedder.info.fingerprint, options=settings.index_options())

    def new_index(self, embedder: ImageEmbedder) -> VectorIndex:
        return self.empty_index(self.settings, embedder)

    def load_saved(self, embedder: ImageEmbedder) -> VectorIndex | None:
        """The index saved for `embedder`, or None when there is none or it cannot be used."""
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

    def save(self) -> None:
        with self.lock:
            model = self.slot.model
            model.index.save(self.index_path_for(model.embedder.info.fingerprint))
            self._dirty = False

    def save_if_dirty(self) -> bool:
        if not self._dirty:
            return False
        self.save()
        return True

    def mark_dirty(self) -> None:
        """The serving index changed without a catalog write (a model switched in): the next save writes it."""
        self._dirty = True

    # --- bringing the index in step with the catalog --------------------------------------------------------------
    def sync(self, show_progress: bool = False) -> None:
        """Make the in-memory index agree with the catalog: load the saved one, then add/drop what differs."""
        with self.lock:
            embedder = self.slot.model.embedder
            revision = self.catalog.revision()
            self._refs = {ref.key: ref for ref in self.catalog.all_images()}
            self._catalog_changed()
            self._sync_hashes()
            saved = self.load_saved(embedder)
            index = saved or self.new_index(embedder)
            changed = self.repair(index, embedder, self._refs, revision, show_progress)
            changed = index.refit() or changed  # flat <-> ivf by size, ivf retrained once it doubled
            self.slot.update(index=index)
            if changed or saved is None:
                self.save()

    def follow_catalog(self) -> bool:
        """Pick up catalog changes made by another process (e.g. `catalog import` beside a running service)."""
        if self.catalog.revision() == self.slot.model.index.revision:
            return False
        with self.lock:  # look again: a write in this process may have been between its commit and index update
            if self.catalog.revision() == self.slot.model.index.revision:
                return False
        log.info("catalog changed outside this process (revision %d, index at %d): syncing",
                 self.catalog.revision(), self.slot.model.index.revision)  # fmt: skip
        self.sync()
        return True

    def repair(
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
            computed = [perceptual_hash(self.decode_stored(self._refs[k], None)) for k in missing]
            self.catalog.store_hashes(missing, computed)
            keys, hashes = self.catalog.perceptual_hashes()
        self.near_duplicates.replace(keys, hashes)

    def _embed_stored(self, embedder: ImageEmbedder, index: VectorIndex, refs: Sequence[ImageRef], show_progress: bool) -> None:
        bar = tqdm(total=len(refs), desc="embedding catalog", unit="img", disable=not show_progress)
        for start in range(0, len(refs), EMBED_CHUNK):
            chunk = refs[start : start + EMBED_CHUNK]
            images = [self.decode_stored(ref, embedder.input_size) for ref in chunk]
            out = embedder.embed_images_with_detail(images)
            keys = np.array([ref.key for ref in chunk], dtype=np.int64)
            self.catalog.store_vectors(embedder.info.fingerprint, keys.tolist(), out.vectors)
            self.catalog.store_details(embedder.info.fingerprint, embedder.detail_layout, keys.tolist(), out.details)
            index.add(keys, out.vectors)
            bar.update(len(chunk))
        bar.close()

    def decode_stored(self, ref: ImageRef, size: int | None) -> Image.Image:
        """A catalog image's pixels, decoded (JPEGs at about `size`) from its stored file."""
        return decode_image(self.blobs.get(ref.sha256), self.settings.image_limits(), size).image

    def rebuild(self, show_progress: bool = False) -> VectorIndex:
        """Re-embed every catalog image with the serving model and replace the index."""
        with self.lock:
            embedder = self.slot.model.embedder
            self.catalog.drop_vectors(embedder.info.fingerprint)
            refs = self.catalog.all_images()
            index = self.new_index(embedder)
            self._embed_stored(embedder, index, refs, show_progress)
            index.refit()  # the kind this catalog's size calls for (embedded into flat, then built)
            index.revision = self.catalog.revision()
            self._refs = {ref.key: ref for ref in refs}
            self._catalog_changed()
            self.slot.update(index=index)
            self.save()
            return index

    def refit(self) -> bool:
        """Give a running service's index the kind its catalog's size now calls for (flat <-> ivf, retrained once it
        doubled, stale codes dropped): refitted on a copy while scans go on searching the serving index, which then
        hands over what changed meanwhile and is swapped out in one assignment. Returns whether it was swapped."""
        serving = self.slot.model.index
        if not serving.needs_refit():
            return False
        started = time.perf_counter()
        fresh = serving.copy()
        fresh.refit()
        with self.lock:
            if self.slot.model.index is not serving:  # a model switch or rebuild replaced it meanwhile
                return False
            caught_up = fresh.catch_up(serving)
            self.slot.update(index=fresh)
            self._dirty = True
        log.info("index refitted while serving in %.1f s (%d changes caught up): %s",
                 time.perf_counter() - started, caught_up, fresh.describe())  # fmt: skip
        return True

    # --- stored files ---------------------------------------------------------------------------------------------
    def collect_orphan_blobs(self, min_age_s: float = 3600.0) -> int:
        """Delete image files no catalog row references (a write that crashed before its commit) and stale temp
        files. Only files older than `min_age_s`, so that a write in flight in another process is never touched."""
        with self.lock:
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
