"""Reference catalog: brands, products and labelled reference images, with content-addressed blobs."""

from reference_catalog.audit import AuditEvent, AuditLog
from reference_catalog.blobs import BlobStore
from reference_catalog.database import create_catalog_engine
from reference_catalog.labels import LABELS, Label
from reference_catalog.manifest import ManifestError, ManifestRow, read_manifest, write_manifest
from reference_catalog.records import BrandSummary, ImageRef, NewImage, ProductSummary
from reference_catalog.repository import CatalogRepository

__all__ = [
    "LABELS",
    "AuditEvent",
    "AuditLog",
    "BlobStore",
    "BrandSummary",
    "CatalogRepository",
    "ImageRef",
    "Label",
    "ManifestError",
    "ManifestRow",
    "NewImage",
    "ProductSummary",
    "create_catalog_engine",
    "read_manifest",
    "write_manifest",
]
