"""Every change to the reference catalog: add one image, import many, relabel, delete.

Each write checks its input first (service/catalog/validation.py; a refusal writes nothing), embeds the photo, then
commits rows, vectors, detail features and audit entries in one transaction and tells the index keeper
(service/catalog/index_keeper.py), under the write lock, so that the image is searchable when the call returns.
The repository records each write in the catalog's change feed, from which the service's other replicas follow it.
Replicas share the blob store: a write checks its files again after its commit, and a delete after its delete, so that
a file is never lost to a delete and an upload of the same bytes on two replicas at once.
Refusals are service errors (service/errors.py): `InvalidValue` for a bad name or label, `Conflict` for bytes already
catalogued under the other label.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from tqdm import tqdm

from embeddings import DecodedImage, ImageRejected
from embeddings.embedder import Embeddings
from embeddings.perceptual_hash import perceptual_hash
from reference_catalog import LABELS, BlobStore, CatalogRepository, ImageRef, NewImage
from reference_catalog.records import DetailFeatures, DuplicateLabelConflict
from service.catalog.index_keeper import IndexKeeper
from service.catalog.validation import MAX_SOURCE_LENGTH, check_label, check_text, clean_name, clean_source
from service.config import Settings
from service.errors import Conflict, DomainError, InvalidValue
from service.models.snapshot import ModelSlot
from service.scanning.photo_prep import PhotoInput, decode_photo

IMPORT_CHUNK = 32  # rows checked, embedded and committed together by `import_rows`


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


@dataclass(eq=False)
class CatalogWriter:
    """Every change to the reference catalog: rows, blobs and the serving index together, under the write lock."""

    settings: Settings
    catalog: CatalogRepository
    blobs: BlobStore
    slot: ModelSlot
    index_keeper: IndexKeeper
    # Called with an image file's sha256 once the file is deleted, to drop what was derived from it (thumbnails).
    blob_deleted: list[Callable[[str], None]] = field(default_factory=list)

    @property
    def lock(self) -> threading.RLock:
        return self.slot.lock

    def decode(self, photo: PhotoInput, draft_size: int | None = None) -> DecodedImage:
        """Check the declared type and decode; JPEGs decode straight to about `draft_size` (the model's input)."""
        size = draft_size if draft_size is not None else self.slot.model.embedder.input_size
        return decode_photo(photo, self.settings.image_limits(), size)

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
        check_label(label)
        if source is not None:
            check_text(source, "source", MAX_SOURCE_LENGTH)
        decoded = self.decode(photo)
        new = _new_image(decoded, brand, product, label, source, group)
        with self.lock:
            model = self.slot.model
            existing = self.catalog.find_duplicate(brand, product, decoded.sha256)
            if existing is not None:
                if existing.label != label:
                    raise Conflict(str(DuplicateLabelConflict(existing)))
                return AddedImage(existing, False, model.index.version)
            embedded = model.embedder.embed_images_with_detail([decoded.image])
            self.blobs.put(decoded.sha256, photo.data)
            ((ref, created),) = self._commit_rows([new], embedded, actor, [photo.data])  # False: added elsewhere meanwhile
            return AddedImage(ref, created, self.slot.model.index.version)

    def _commit_rows(
        self, images: Sequence[NewImage], embedded: Embeddings, actor: str, files: Sequence[bytes]
    ) -> list[tuple[ImageRef, bool]]:
        """Write rows, vectors, detail features and audit entries in one transaction, then make them searchable; for
        each row its ref and whether it was written now (False: another writer had added it meanwhile). `files`:
        each row's image bytes, already put in the blob store."""
        embedder = self.slot.model.embedder
        details = DetailFeatures(embedder.detail_layout, embedded.details)
        written = self.catalog.insert_images(images, embedded.vectors, embedder.info.fingerprint, actor, details)
        revision = self.catalog.written_revision()
        self._keep_files(images, files)
        self.index_keeper.added([ref for ref, _ in written], embedded.vectors, [image.phash for image in images], revision)
        return written

    def _keep_files(self, images: Sequence[NewImage], files: Sequence[bytes]) -> None:
        """Put back a committed row's file that another process deleted meanwhile: a replica deleting the last other
        row of the same bytes, between this write's `put` (which found the file there) and its commit. The deleting
        side looks again after its delete (`delete_reference`); between the two checks one of them sees the other."""
        for image, data in zip(images, files, strict=True):
            if not self.blobs.path(image.sha256).is_file():
                self.blobs.put(image.sha256, data)

    def _commit_counted(
        self,
        images: Sequence[NewImage],
        embedded: Embeddings,
        actor: str,
        names: Sequence[str],
        summary: ImportSummary,
        files: Sequence[bytes],
    ) -> None:
        """Commit a batch and count what was written; when another writer added one of its photos under the other
        label meanwhile, commit row by row so that only that row fails (reported with its name)."""
        try:
            written = self._commit_rows(images, embedded, actor, files)
        except DuplicateLabelConflict:
            if len(images) == 1:
                raise
            for i, name in enumerate(names):
                try:
                    self._commit_counted([images[i]], embedded.rows(i, i + 1), actor, [name], summary, [files[i]])
                except DuplicateLabelConflict as exc:
                    assert summary.errors is not None
                    summary.errors.append((name, str(exc)))
            return
        created = sum(1 for _, was_created in written if was_created)
        summary.added += created
        summary.duplicates += len(written) - created

    def import_rows(self, rows: Sequence[ImportRow], show_progress: bool = False, actor: str = "system") -> ImportSummary:
        """Import rows (`ImportRow`); bad rows are reported, good ones kept."""
        summary = ImportSummary(errors=[])
        assert summary.errors is not None
        bar = tqdm(total=len(rows), desc="importing", unit="img", disable=not show_progress)
        for start in range(0, len(rows), IMPORT_CHUNK):
            batch: list[tuple[NewImage, DecodedImage, bytes]] = []
            names: list[str] = []
            seen: dict[tuple[str, str, str], str] = {}
            with self.lock:
                for name, photo, brand, product, label, source, group in rows[start : start + IMPORT_CHUNK]:
                    try:
                        brand, product = clean_name(brand, "brand"), clean_name(product, "product")
                        if label not in LABELS:
                            raise InvalidValue(f"unknown label {label!r}")
                        source, group = clean_source(source, "source"), clean_source(group, "group")
                        decoded = self.decode(photo)
                        key = (brand, product, decoded.sha256)
                        existing = self.catalog.find_duplicate(*key)
                        if existing is not None and existing.label != label:
                            raise Conflict(str(DuplicateLabelConflict(existing)))
                        if key in seen and seen[key] != label:
                            raise Conflict(f"the same image is listed earlier as {seen[key]} for {brand}/{product}")
                        if existing is not None or key in seen:
                            summary.duplicates += 1
                            continue
                        seen[key] = label
                        batch.append((_new_image(decoded, brand, product, label, source, group), decoded, photo.data))
                        names.append(name)
                    except (ImageRejected, DomainError) as exc:
                        summary.errors.append((name, str(exc)))
                if batch:
                    embedded = self.slot.model.embedder.embed_images_with_detail([decoded.image for _, decoded, _ in batch])
                    for new, _, data in batch:
                        self.blobs.put(new.sha256, data)
                    # Another writer (an HTTP upload, another process) may have added some rows since the checks
                    # above: those were not written here, so they count as duplicates, not as added.
                    self._commit_counted(
                        [new for new, _, _ in batch], embedded, actor, names, summary, [data for _, _, data in batch]
                    )
            bar.update(min(IMPORT_CHUNK, len(rows) - start))
        bar.close()
        return summary

    def relabel_reference(self, image_id: str, label: str, actor: str = "system") -> ImageRef | None:
        """Change a reference image's label (None: no such image); the next scan sees the new label."""
        check_label(label)
        with self.lock:
            changed = self.catalog.relabel_image(image_id, label, actor)
            if changed is None:
                return None
            ref, relabelled = changed
            if relabelled:
                self.index_keeper.relabelled(ref, self.catalog.written_revision())
        return ref

    def delete_reference(self, image_id: str, actor: str = "system") -> ImageRef | None:
        """Remove a reference image from the catalog and the index (None: no such image); its file goes too when no
        other product's row uses the same bytes."""
        with self.lock:
            deleted = self.catalog.delete_image(image_id, actor)
            if deleted is None:
                return None
            ref, blob_unused = deleted
            self.index_keeper.removed(ref, self.catalog.written_revision())
            if blob_unused:  # inside the lock: an upload of the same bytes in this process cannot slip in between
                self._delete_file(ref.sha256)
        return ref

    def _delete_file(self, sha256: str) -> None:
        """Delete an image file no row uses any more. Another process (a replica sharing the blob store) may have
        committed a row of the same bytes meanwhile, its `put` having found the file still there: look again after
        the delete, and put the bytes back if so (the writing side checks after its commit: `_keep_files`)."""
        try:
            data = self.blobs.get(sha256)
        except FileNotFoundError:
            data = None
        self.blobs.delete(sha256)
        if data is not None and sha256 in self.catalog.referenced_sha256s([sha256]):
            self.blobs.put(sha256, data)
            return
        for listener in self.blob_deleted:
            listener(sha256)


def _new_image(
    decoded: DecodedImage, brand: str, product: str, label: str, source: str | None, group: str | None = None
) -> NewImage:
    return NewImage(
        brand, product, label, decoded.sha256, decoded.media_type, decoded.width, decoded.height, source,
        perceptual_hash(decoded.image), group or None,
    )  # fmt: skip
