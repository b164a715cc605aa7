"""CatalogRepository: every read and write of the catalog, each write one transaction that bumps the revision.

A write that adds, relabels or deletes images also records them in the catalog's change feed (`catalog_changes`, one
row per image under the revision the write made), from which the service's replicas follow each other's writes
(`changes_since`); the feed is pruned to its last revisions (`prune_changes`, from `serve`'s upkeep).
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from sqlalchemy import Engine, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, contains_eager, sessionmaker

from reference_catalog.audit import AuditEvent
from reference_catalog.change_feed import ChangeFeed
from reference_catalog.models import (
    Brand,
    ImageDetail,
    ImageEmbedding,
    ImageGroup,
    ImageHash,
    Product,
    ReferenceImage,
)
from reference_catalog.records import (
    BrandSummary,
    DetailFeatures,
    DuplicateLabelConflict,
    ImageRef,
    NewImage,
    ProductSummary,
)

KEYS_PER_QUERY = 1000  # image keys per `IN (...)` list (SQLite allows 32,766 variables, PostgreSQL 65,535)
MAX_OFFSET = 2**62  # a page offset past any catalog, far inside SQL's 64-bit integers: larger ones ask for the same empty page


def new_public_id() -> str:
    return "ref_" + secrets.token_urlsafe(16)


def _ref(image: ReferenceImage) -> ImageRef:
    return ImageRef(
        key=image.id,
        image_id=image.public_id,
        brand=image.product.brand.name,
        product=image.product.name,
        label=image.label,
        sha256=image.sha256,
        source=image.source,
        media_type=image.media_type,
        width=image.width,
        height=image.height,
        created_at=image.created_at,
    )


class CatalogRepository(ChangeFeed):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._written = threading.local()  # `written_revision`, per thread

    # --- reads -----------------------------------------------------------------------------------------------
    def all_images(self) -> list[ImageRef]:
        with self._sessions() as session:
            rows = session.scalars(select(ReferenceImage).join(ReferenceImage.product).join(Product.brand))
            return [_ref(image) for image in rows]

    def image_page(
        self, brands: Collection[str] | None = None, brand: str | None = None, product: str | None = None,
        label: str | None = None, limit: int = 100, offset: int = 0, newest_first: bool = False,
    ) -> tuple[list[ImageRef], int]:  # fmt: skip
        """One page of the images of `brands` (None: all), narrowed to a brand, product and label, oldest first (as added)
        or newest first; and how many match in all. Filtered, counted and paged in SQL: a page costs its rows only."""
        wanted = ((Brand.name, brand), (Product.name, product), (ReferenceImage.label, label))
        conditions = [column == value for column, value in wanted if value is not None]
        if brands is not None:
            conditions.append(Brand.name.in_(sorted(brands)))
        joined = select(ReferenceImage).join(ReferenceImage.product).join(Product.brand).where(*conditions)
        counted = select(func.count()).select_from(joined.with_only_columns(ReferenceImage.id).subquery())
        order = (ReferenceImage.created_at.desc(), ReferenceImage.id.desc()) if newest_first else (ReferenceImage.id,)
        loaded = contains_eager(ReferenceImage.product).contains_eager(Product.brand)  # `_ref` reads no more rows
        page = joined.options(loaded).order_by(*order).limit(limit).offset(min(offset, MAX_OFFSET))
        with self._sessions() as session:
            return [_ref(image) for image in session.scalars(page)], session.scalar(counted) or 0

    def images_by_keys(self, keys: Iterable[int]) -> dict[int, ImageRef]:
        """The images of `keys` that exist now, by key (keys of deleted images are left out)."""
        found: dict[int, ImageRef] = {}
        with self._sessions() as session:
            for chunk in _chunks(keys):
                query = (
                    select(ReferenceImage)
                    .join(ReferenceImage.product)
                    .join(Product.brand)
                    .options(contains_eager(ReferenceImage.product).contains_eager(Product.brand))
                    .where(ReferenceImage.id.in_(chunk))
                )
                found.update((image.id, _ref(image)) for image in session.scalars(query))
        return found

    def referenced_sha256s(self, among: Collection[str] | None = None) -> set[str]:
        """The image files some row references (of those `among`, when given)."""
        query = select(ReferenceImage.sha256).distinct()
        if among is not None:
            query = query.where(ReferenceImage.sha256.in_(sorted(among)))
        with self._sessions() as session:
            return set(session.scalars(query))

    def get_image(self, image_id: str) -> ImageRef | None:
        with self._sessions() as session:
            image = session.scalar(select(ReferenceImage).where(ReferenceImage.public_id == image_id))
            return _ref(image) if image else None

    def find_duplicate(self, brand: str, product: str, sha256: str) -> ImageRef | None:
        with self._sessions() as session:
            return self._find_duplicate(session, brand, product, sha256)

    def _find_duplicate(self, session: Session, brand: str, product: str, sha256: str) -> ImageRef | None:
        image = session.scalar(
            select(ReferenceImage)
            .join(ReferenceImage.product)
            .join(Product.brand)
            .where(Brand.name == brand, Product.name == product, ReferenceImage.sha256 == sha256)
        )
        return _ref(image) if image else None

    def list_brands(self) -> list[BrandSummary]:
        with self._sessions() as session:
            rows = session.execute(
                select(Brand.name, func.count(func.distinct(Product.id)), func.count(ReferenceImage.id))
                .outerjoin(Product, Product.brand_id == Brand.id)
                .outerjoin(ReferenceImage, ReferenceImage.product_id == Product.id)
                .group_by(Brand.id)
                .order_by(Brand.name)
            )
            return [BrandSummary(name, products, images) for name, products, images in rows]

    def list_products(self, brand: str | None = None) -> list[ProductSummary]:
        with self._sessions() as session:
            query = (
                select(Brand.name, Product.name, ReferenceImage.label, func.count(ReferenceImage.id))
                .join(Product, Product.brand_id == Brand.id)
                .outerjoin(ReferenceImage, ReferenceImage.product_id == Product.id)
                .group_by(Brand.name, Product.name, ReferenceImage.label)
                .order_by(Brand.name, Product.name)
            )
            if brand is not None:
                query = query.where(Brand.name == brand)
            counts: dict[tuple[str, str], dict[str, int]] = {}
            for brand_name, product_name, label, count in session.execute(query):
                entry = counts.setdefault((brand_name, product_name), {"authentic": 0, "counterfeit": 0})
                if label is not None:
                    entry[label] = count
            return [ProductSummary(b, p, c["authentic"], c["counterfeit"]) for (b, p), c in counts.items()]

    def stored_vectors(self, fingerprint: str, dim: int, keys: Iterable[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(keys, vectors) of every image embedded under `fingerprint`, or of those of `keys` that are."""
        query = select(ImageEmbedding.image_id, ImageEmbedding.vector).where(ImageEmbedding.fingerprint == fingerprint)
        with self._sessions() as session:
            if keys is None:
                rows = session.execute(query).all()
            else:
                rows = [
                    row for chunk in _chunks(keys) for row in session.execute(query.where(ImageEmbedding.image_id.in_(chunk)))
                ]
        return _matrix(rows, dim, np.float32)

    def stored_details(self, fingerprint: str, layout: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(keys, float32 features) of every image whose detail features under `fingerprint` have `layout`."""
        with self._sessions() as session:
            rows = session.execute(
                select(ImageDetail.image_id, ImageDetail.features).where(
                    ImageDetail.fingerprint == fingerprint, ImageDetail.layout == layout
                )
            ).all()
        return _matrix(rows, dim, np.float16)

    def shoot_groups(self) -> dict[int, str]:
        """Image key -> photo shoot, for the images that have one."""
        with self._sessions() as session:
            return dict(session.execute(select(ImageGroup.image_id, ImageGroup.name)).tuples().all())

    # --- writes ----------------------------------------------------------------------------------------------
    def add_images(
        self,
        images: Sequence[NewImage],
        vectors: np.ndarray,
        fingerprint: str,
        actor: str = "system",
        details: DetailFeatures | None = None,
    ) -> list[ImageRef]:
        """Insert images with their vectors (and detail features) in one transaction; returns refs in input order.

        Raises DuplicateLabelConflict (nothing written) when a row repeats an image under another label.
        Rows whose bytes are already there with the same label return the existing ref.
        """
        return [ref for ref, _ in self.insert_images(images, vectors, fingerprint, actor, details)]

    def insert_images(
        self,
        images: Sequence[NewImage],
        vectors: np.ndarray,
        fingerprint: str,
        actor: str = "system",
        details: DetailFeatures | None = None,
    ) -> list[tuple[ImageRef, bool]]:
        """`add_images`, telling for each row whether this call created it (and audited it under `actor`): False for
        one already there, e.g. written by another writer after the caller last looked, or earlier in `images`. A call
        that creates nothing leaves the revision as it is.

        Another process (a replica) committing the same photo of the same product between this call's look and its
        insert makes the insert fail on the unique key: the call is then made once more, and finds that row."""
        try:
            return self._insert_images(images, vectors, fingerprint, actor, details)
        except IntegrityError:
            return self._insert_images(images, vectors, fingerprint, actor, details)

    def _insert_images(
        self, images: Sequence[NewImage], vectors: np.ndarray, fingerprint: str, actor: str, details: DetailFeatures | None
    ) -> list[tuple[ImageRef, bool]]:
        self._written.revision = None
        with self._sessions.begin() as session:
            refs: list[tuple[ImageRef, bool]] = []
            for row, (new, vector) in enumerate(zip(images, vectors, strict=True)):
                existing = self._find_duplicate(session, new.brand, new.product, new.sha256)
                if existing is not None:
                    if existing.label != new.label:
                        raise DuplicateLabelConflict(existing)
                    refs.append((existing, False))
                    continue
                product = self._get_or_create_product(session, new.brand, new.product)
                image = ReferenceImage(
                    public_id=new_public_id(),
                    product=product,
                    sha256=new.sha256,
                    label=new.label,
                    source=new.source,
                    media_type=new.media_type,
                    width=new.width,
                    height=new.height,
                )
                session.add(image)
                session.flush()
                session.add(ImageEmbedding(image_id=image.id, fingerprint=fingerprint, vector=_vector_bytes(vector)))
                if new.phash is not None:
                    session.add(ImageHash(image_id=image.id, phash=new.phash))
                if new.group:
                    session.add(ImageGroup(image_id=image.id, name=new.group))
                if details is not None:
                    session.add(_detail_row(image.id, fingerprint, details.layout, details.rows[row]))
                ref = _ref(image)
                AuditEvent(actor, "catalog.add", ref.image_id, ref.brand,
                           {"product": ref.product, "label": ref.label, "sha256": ref.sha256, "source": ref.source}
                           ).add_to(session)  # fmt: skip
                refs.append((ref, True))
            created = [ref.key for ref, was_created in refs if was_created]
            revision = self._record_changes(session, "add", created) if created else None
        self._written.revision = revision
        return refs

    def store_vectors(self, fingerprint: str, keys: Iterable[int], vectors: np.ndarray) -> None:
        with self._sessions.begin() as session:
            for key, vector in zip(keys, vectors, strict=True):
                session.merge(ImageEmbedding(image_id=int(key), fingerprint=fingerprint, vector=_vector_bytes(vector)))

    def store_details(self, fingerprint: str, layout: str, keys: Iterable[int], features: np.ndarray) -> None:
        with self._sessions.begin() as session:
            for key, row in zip(keys, features, strict=True):
                session.merge(_detail_row(int(key), fingerprint, layout, row))

    def perceptual_hashes(self, keys: Iterable[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(keys, hashes as uint64) of every image with a perceptual hash, or of those of `keys` that have one."""
        query = select(ImageHash.image_id, ImageHash.phash)
        with self._sessions() as session:
            if keys is None:
                rows = session.execute(query).all()
            else:
                rows = [row for chunk in _chunks(keys) for row in session.execute(query.where(ImageHash.image_id.in_(chunk)))]
        keys = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        hashes = np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows)).view(np.uint64)
        return keys, hashes

    def store_hashes(self, keys: Iterable[int], hashes: Iterable[int]) -> None:
        with self._sessions.begin() as session:
            for key, value in zip(keys, hashes, strict=True):
                session.merge(ImageHash(image_id=int(key), phash=int(value)))

    def drop_vectors(self, fingerprint: str) -> None:
        with self._sessions.begin() as session:
            session.execute(delete(ImageEmbedding).where(ImageEmbedding.fingerprint == fingerprint))
            session.execute(delete(ImageDetail).where(ImageDetail.fingerprint == fingerprint))

    def delete_image(self, image_id: str, actor: str = "system") -> tuple[ImageRef, bool] | None:
        """Delete one image; returns its ref and whether its blob is no longer referenced by any row."""
        self._written.revision = None
        with self._sessions.begin() as session:
            image = session.scalar(select(ReferenceImage).where(ReferenceImage.public_id == image_id))
            if image is None:
                return None
            ref = _ref(image)
            session.execute(delete(ImageEmbedding).where(ImageEmbedding.image_id == image.id))
            session.execute(delete(ImageHash).where(ImageHash.image_id == image.id))
            session.execute(delete(ImageDetail).where(ImageDetail.image_id == image.id))
            session.execute(delete(ImageGroup).where(ImageGroup.image_id == image.id))
            session.delete(image)
            session.flush()
            AuditEvent(actor, "catalog.delete", ref.image_id, ref.brand,
                       {"product": ref.product, "label": ref.label, "sha256": ref.sha256}).add_to(session)  # fmt: skip
            others = (
                session.scalar(select(func.count()).select_from(ReferenceImage).where(ReferenceImage.sha256 == ref.sha256)) or 0
            )
            revision = self._record_changes(session, "delete", [ref.key])
        self._written.revision = revision
        return ref, others == 0

    def relabel_image(self, image_id: str, label: str, actor: str = "system") -> tuple[ImageRef, bool] | None:
        """Set an image's label; returns its ref and whether the label changed (a change bumps the revision)."""
        self._written.revision = None
        with self._sessions.begin() as session:
            image = session.scalar(select(ReferenceImage).where(ReferenceImage.public_id == image_id))
            if image is None:
                return None
            previous = image.label
            if previous == label:
                return _ref(image), False
            image.label = label
            session.flush()
            ref = _ref(image)
            AuditEvent(actor, "catalog.relabel", ref.image_id, ref.brand,
                       {"product": ref.product, "from": previous, "to": label, "sha256": ref.sha256}).add_to(session)  # fmt: skip
            revision = self._record_changes(session, "relabel", [ref.key])
        self._written.revision = revision
        return ref, True

    def _get_or_create_product(self, session: Session, brand_name: str, product_name: str) -> Product:
        """The product (and its brand), created where missing. Another process (a replica, the CLI) creating the same
        one at the same moment is no error: INSERT ... ON CONFLICT DO NOTHING, then read what is there."""
        brand_query = select(Brand).where(Brand.name == brand_name)
        brand = session.scalar(brand_query)
        if brand is None:
            _insert_missing(session, Brand, name=brand_name)
            brand = session.scalars(brand_query).one()
        product_query = select(Product).where(Product.brand_id == brand.id, Product.name == product_name)
        product = session.scalar(product_query)
        if product is None:
            _insert_missing(session, Product, brand_id=brand.id, name=product_name)
            product = session.scalars(product_query).one()
        return product


def _insert_missing(session: Session, model: type[Brand] | type[Product], **values: Any) -> None:
    """Insert a row unless one with the same unique key is there (or committed meanwhile by another process)."""
    dialects: dict[str, Any] = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}
    insert_or_skip = dialects.get(session.get_bind().dialect.name)
    if insert_or_skip is None:
        session.add(model(**values))
        session.flush()
        return
    session.execute(insert_or_skip(model).values(**values).on_conflict_do_nothing())


def _chunks(keys: Iterable[int]) -> Iterator[list[int]]:
    ordered = sorted({int(key) for key in keys})
    for start in range(0, len(ordered), KEYS_PER_QUERY):
        yield ordered[start : start + KEYS_PER_QUERY]


def _matrix(rows: Sequence[Any], dim: int, stored: type[np.floating[Any]]) -> tuple[np.ndarray, np.ndarray]:
    """(keys, float32 rows) from (key, bytes of `dim` values of dtype `stored`) rows."""
    keys = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    matrix = np.empty((len(rows), dim), dtype=np.float32)
    for i, (_, blob) in enumerate(rows):
        matrix[i] = np.frombuffer(blob, dtype=stored)
    return keys, matrix


def _detail_row(key: int, fingerprint: str, layout: str, features: np.ndarray) -> ImageDetail:
    blob = np.ascontiguousarray(features, dtype=np.float16).tobytes()
    return ImageDetail(image_id=key, fingerprint=fingerprint, layout=layout, features=blob)


def _vector_bytes(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()
