"""Keeps the serving model's vector index, and what scans read beside it, in step with the catalog.

The catalog database is the truth; the index (`embeddings.VectorIndex`, saved per model under `index_dir`) and the
in-memory tables next to it are derived from it and repaired from it: at start (`sync`), after another process
changed the catalog (`follow_catalog`: the images the catalog's change feed names, or the whole catalog when the feed
cannot say), or from scratch (`rebuild`). Beside the index it keeps the catalog's images by
index key (`refs`: scans read labels from here, the index holding only vectors), each brand/product scope's keys (cached
until the catalog changes) and the perceptual-hash table of near-duplicates. Catalog writes in this process
(service/catalog/writer.py) tell it what they wrote (`added`, `relabelled`, `removed`) under the write lock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from embeddings import ImageEmbedder, VectorIndex, decode_image
from embeddings.perceptual_hash import perceptual_hash
from reference_catalog import BlobStore, CatalogRepository, ImageRef
from reference_catalog.records import ChangeBatch
from service.catalog import index_snapshot
from service.catalog.near_duplicates import NearDuplicateTable
from service.config import Settings
from service.models.snapshot import ModelSlot

log = logging.getLogger(__name__)

EMBED_CHUNK = 64  # catalog images embedded per forward pass when the index is repaired or rebuilt
Scope = tuple[str | None, str | None]


@dataclass
class FollowStats:
    """What `follow_catalog` has done since this keeper was made (logs and tests read it)."""

    batches: int = 0  # change-feed batches applied
    changes: int = 0  # image changes in them (those this process had applied itself included)
    full_syncs: int = 0  # times the feed could not say and the whole catalog was read again


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
        self.follow_stats = FollowStats()

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
    def added(
        self, refs: Sequence[ImageRef], vectors: np.ndarray, phashes: Sequence[int | None], revision: int | None = None
    ) -> None:
        """Rows just committed (`vectors[i]` is `refs[i]`'s); those already known (another writer's) are skipped.
        `revision`: the one the write made (`CatalogRepository.written_revision`), None when it created nothing."""
        fresh = [i for i, ref in enumerate(refs) if ref.key not in self._refs]
        index = self.slot.model.index
        if fresh:
            index.add(np.array([refs[i].key for i in fresh], dtype=np.int64), vectors[fresh])
            for i in fresh:
                self._refs[refs[i].key] = refs[i]
                if phashes[i] is not None:
                    self.near_duplicates.add(refs[i].key, phashes[i] or 0)
        self._changed(revision)

    def relabelled(self, ref: ImageRef, revision: int | None = None) -> None:
        # Scans read labels from these refs (the index holds only vectors), so the new label counts at once.
        self._refs[ref.key] = ref
        self._changed(revision)

    def removed(self, ref: ImageRef, revision: int | None = None) -> None:
        self.slot.model.index.remove(np.array([ref.key], dtype=np.int64))
        self.near_duplicates.remove(ref.key)
        self._refs.pop(ref.key, None)
        self._changed(revision)

    def _changed(self, revision: int | None) -> None:
        self._catalog_changed()
        index = self.slot.model.index
        # The index's revision says that every change up to it is in: it moves on with this write only when the write
        # follows it directly. After another process's write (a replica, the CLI), it stays where it is, and
        # `follow_catalog` brings in the changes between (this one it finds applied already).
        if revision is not None and revision == index.revision + 1:
            index.revision = revision
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
            forwarded = saved is not None and self._bring_forward(saved, embedder, revision)
            index = saved or self.new_index(embedder)
            changed = self.repair(index, embedder, self._refs, revision, show_progress) or forwarded
            changed = index.refit() or changed  # flat <-> ivf by size, ivf retrained once it doubled
            self.slot.update(index=index)
            if changed or saved is None:
                self.save()

    def follow_catalog(self) -> bool:
        """Pick up catalog changes made by other processes (the service's other replicas, `catalog import` beside a
        running service) from the catalog's change feed: only the images changed since the index's revision are
        read. When the feed cannot say (the index is older than the feed's start, e.g. after a prune), the whole
        catalog is read again (`sync`). Returns whether anything was brought in."""
        if self.catalog.revision() == self.slot.model.index.revision:
            return False
        with self.lock:  # under the lock, a write in this process is never between its commit and its index update
            since = self.slot.model.index.revision
            started = time.perf_counter()
            batch = self.catalog.changes_since(since)
            if batch is None:
                log.info("catalog changed outside this process; the index (revision %d) is older than the change feed "
                         "(starts after %d) or newer than the catalog: reading the whole catalog again",
                         since, self.catalog.changes_from())  # fmt: skip
                self.sync()
                self.follow_stats.full_syncs += 1
                log.info("read the whole catalog (%d images) to revision %d in %.1f ms", len(self._refs),
                         self.slot.model.index.revision, 1000 * (time.perf_counter() - started))  # fmt: skip
                return True
            if batch.revision == since:
                return False
            counts = self.apply_changes(batch)
        self.follow_stats.batches += 1
        self.follow_stats.changes += len(batch.changes)
        log.info("followed the catalog from revision %d to %d in %.1f ms: %d added, %d relabelled, %d removed, "
                 "%d in step already", since, batch.revision, 1000 * (time.perf_counter() - started),
                 counts["added"], counts["relabelled"], counts["removed"], counts["in_step"])  # fmt: skip
        return True

    def apply_changes(self, batch: ChangeBatch) -> dict[str, int]:
        """Bring the serving index, refs and near-duplicate hashes to `batch.revision` (call under the lock): each
        changed image is looked up as it is now; one that exists is added (its stored vector for the serving model,
        embedded from its file when there is none) or relabelled, one that does not is removed. Images this process
        already has as they are now (its own writes) are left alone. Returns the counts of each (`in_step`: changes
        with nothing left to do)."""
        model = self.slot.model
        index, embedder = model.index, model.embedder
        info = embedder.info
        now = self.catalog.images_by_keys(batch.changes)
        gone = [key for key in batch.changes if key not in now]
        # A key whose image differs from the one known here (SQLite databases made before AUTOINCREMENT reused keys)
        # gets the new image's vector, hash and ref.
        new = [key for key, ref in now.items() if key not in self._refs or self._refs[key].image_id != ref.image_id]
        fresh = set(new)
        relabelled = [key for key, ref in now.items() if key not in fresh and key in self._refs and self._refs[key] != ref]
        removed = sum(1 for key in gone if key in self._refs)
        index.remove(np.array(gone, dtype=np.int64))
        hash_keys, hashes = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.uint64)
        if new:
            keys, vectors = self.catalog.stored_vectors(info.fingerprint, info.dim, keys=new)
            index.add(keys, vectors)
            to_embed = sorted(set(new) - set(keys.tolist()))
            if to_embed:
                log.info("embedding %d catalog images added elsewhere with %s", len(to_embed), info.short_id)
                self._embed_stored(embedder, index, [now[key] for key in to_embed], False)
            hash_keys, hashes = self._hashes_of({key: now[key] for key in new})
        self.near_duplicates.update(gone + new, hash_keys, hashes)
        for key in gone:
            self._refs.pop(key, None)
        for key in new + relabelled:
            self._refs[key] = now[key]
        index.revision = batch.revision
        self._catalog_changed()
        self._dirty = True
        in_step = len(batch.changes) - len(new) - len(relabelled) - removed  # this process's writes, or added and gone
        return {"added": len(new), "relabelled": len(relabelled), "removed": removed, "in_step": in_step}

    def _hashes_of(self, refs: dict[int, ImageRef]) -> tuple[np.ndarray, np.ndarray]:
        """The stored perceptual hashes of these images, those missing computed from their files (and stored)."""
        keys, hashes = self.catalog.perceptual_hashes(keys=refs)
        missing = sorted(set(refs) - set(keys.tolist()))
        if missing:
            self.catalog.store_hashes(missing, [perceptual_hash(self.decode_stored(refs[k], None)) for k in missing])
            keys, hashes = self.catalog.perceptual_hashes(keys=refs)
        return keys, hashes

    def _bring_forward(self, index: VectorIndex, embedder: ImageEmbedder, revision: int) -> bool:
        """A saved index older than the catalog (saved by this or another replica sharing the index folder): apply
        the vectors of the images the change feed names since its revision, so that `repair` then has nothing to
        re-read. When the feed cannot say, or the result does not hold exactly the catalog's images (`self._refs`,
        read at `revision` or later), the index keeps its revision and `repair` does the whole work as before.
        Returns whether the index changed."""
        if index.revision >= revision:
            return False
        batch = self.catalog.changes_since(index.revision)
        if batch is None:
            return False
        present = [key for key in batch.changes if key in self._refs]
        index.remove(np.array([key for key in batch.changes if key not in self._refs], dtype=np.int64))
        info = embedder.info
        keys, vectors = self.catalog.stored_vectors(info.fingerprint, info.dim, keys=present)
        index.add(keys, vectors)
        if len(keys) == len(present) and set(index.ids().tolist()) == set(self._refs):
            log.info("saved index brought from revision %d to %d by the change feed (%d images changed)",
                     index.revision, revision, len(batch.changes))  # fmt: skip
            index.revision = revision
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

    # --- immutable snapshots, for read-only processes (service/catalog/index_snapshot.py) ------------------------
    def publish_snapshot(self) -> Path:
        """Write (or reuse) the snapshot of the serving index at its catalog revision, with the refs and hashes beside
        it; returns its folder. Taken under the write lock, so the three agree."""
        with self.lock:
            keys, hashes = self.catalog.perceptual_hashes()
            return index_snapshot.publish(self.settings.index_dir, self.slot.model.index, self._refs, keys, hashes)

    def load_snapshot(self, path: Path) -> None:
        """Serve the index, refs and near-duplicate hashes of a published snapshot (a read-only core: nothing is
        written, the catalog is not read); raises SnapshotError when it is not the serving model's."""
        snapshot = index_snapshot.load(path, self.settings.index_options())
        fingerprint = self.slot.model.embedder.info.fingerprint
        if snapshot.index.fingerprint != fingerprint:
            raise index_snapshot.SnapshotError(
                f"{path} holds the index of model {snapshot.index.fingerprint[:16]}, not of the serving model {fingerprint[:16]}"
            )
        with self.lock:
            self._refs = snapshot.refs
            self._catalog_changed()
            self.near_duplicates.replace(snapshot.hash_keys, snapshot.hashes)
            self.slot.update(index=snapshot.index)
