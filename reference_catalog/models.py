"""SQLAlchemy 2 tables of the catalog. Integer image keys are the FAISS ids; public ids are random strings."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from reference_catalog.database import Base, utcnow


class Brand(Base):
    __tablename__ = "brands"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    products: Mapped[list[Product]] = relationship(back_populates="brand")


class Product(Base):
    __tablename__ = "products"
    __table_args__ = (UniqueConstraint("brand_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    brand_id: Mapped[int] = mapped_column(ForeignKey("brands.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    brand: Mapped[Brand] = relationship(back_populates="products")


class ReferenceImage(Base):
    __tablename__ = "reference_images"
    __table_args__ = (UniqueConstraint("product_id", "sha256"), {"sqlite_autoincrement": True})  # keys never reused
    id: Mapped[int] = mapped_column(primary_key=True)
    public_id: Mapped[str] = mapped_column(String(40), unique=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"), index=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    label: Mapped[str] = mapped_column(String(20))
    source: Mapped[str | None] = mapped_column(String(500))
    media_type: Mapped[str] = mapped_column(String(40))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    product: Mapped[Product] = relationship()


class ImageEmbedding(Base):
    """A reference image's vector under one model: lets the index be repaired or rebuilt without re-embedding."""

    __tablename__ = "image_embeddings"
    image_id: Mapped[int] = mapped_column(ForeignKey("reference_images.id", ondelete="CASCADE"), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class ImageDetail(Base):
    """A reference image's detail features under one model and pooling layout (float16): what the authenticity head
    learns from, kept so that refitting it never re-embeds the catalog."""

    __tablename__ = "image_details"
    image_id: Mapped[int] = mapped_column(ForeignKey("reference_images.id", ondelete="CASCADE"), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    layout: Mapped[str] = mapped_column(String(40))
    features: Mapped[bytes] = mapped_column(LargeBinary)


class ImageGroup(Base):
    """The photo shoot an image comes from (a manifest's `group` column): cross-validation keeps a shoot whole."""

    __tablename__ = "image_groups"
    image_id: Mapped[int] = mapped_column(ForeignKey("reference_images.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))


class ImageHash(Base):
    """64-bit perceptual hash (pHash) of a reference image, for near-duplicate detection."""

    __tablename__ = "image_hashes"
    image_id: Mapped[int] = mapped_column(ForeignKey("reference_images.id", ondelete="CASCADE"), primary_key=True)
    phash: Mapped[int] = mapped_column(BigInteger)


class CatalogState(Base):
    """Single-row counters; `revision` grows with every catalog change and is stored with the index."""

    __tablename__ = "catalog_state"
    key: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[int] = mapped_column(Integer)


class CatalogChange(Base):
    """The change feed: one row per image a catalog write added, relabelled or deleted, under the revision that write
    made. A service replica brings its in-memory index from revision r to now by reading the rows after r (see
    `CatalogRepository.changes_since`) instead of re-reading the catalog. Revisions up to catalog_state's
    `changes_from` have no rows (written before the feed existed, or pruned): a replica that far behind re-syncs."""

    __tablename__ = "catalog_changes"
    __table_args__ = ({"sqlite_autoincrement": True},)
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    revision: Mapped[int] = mapped_column(BigInteger, index=True)
    image_key: Mapped[int] = mapped_column(BigInteger)  # reference_images.id (no foreign key: deleted images stay named)
    action: Mapped[str] = mapped_column(String(10))  # "add" | "relabel" | "delete"
    at: Mapped[datetime] = mapped_column(default=utcnow)
