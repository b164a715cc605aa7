"""The schema of the release of 2026-12-05, the last one before migrations: on an empty database, or on one that release
(or an older one) made, which has no alembic_version table and possibly not all of these tables.

Until then each store created its tables at start (`create_all`, which adds missing tables and never changes existing
ones), so such a database holds a subset of these tables, each as declared here. This revision creates only what is
missing: tables, then the indexes of existing tables, then the audit log's append-only triggers (SQLite). When it
creates scan_subjects on a database that holds scan records, it fills it from them, as the release did at start.

The tables are written out here, not imported from the models: a migration describes one fixed revision of the
schema, whatever the models declare later.

Revision ID: 0001_release_2026_12_05
Revises:
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0001_release_2026_12_05"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

schema = sa.MetaData()

# --- catalog -------------------------------------------------------------------------------------------------------
sa.Table(
    "brands",
    schema,
    sa.Column("id", sa.Integer(), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.UniqueConstraint("name"),
)
sa.Table(
    "products",
    schema,
    sa.Column("id", sa.Integer(), primary_key=True),
    sa.Column("brand_id", sa.Integer(), sa.ForeignKey("brands.id"), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.UniqueConstraint("brand_id", "name"),
    sa.Index("ix_products_brand_id", "brand_id"),
)
sa.Table(
    "reference_images",
    schema,
    sa.Column("id", sa.Integer(), primary_key=True),  # AUTOINCREMENT on SQLite: keys (FAISS ids) are never reused
    sa.Column("public_id", sa.String(40), nullable=False),
    sa.Column("product_id", sa.Integer(), sa.ForeignKey("products.id"), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("label", sa.String(20), nullable=False),
    sa.Column("source", sa.String(500)),
    sa.Column("media_type", sa.String(40), nullable=False),
    sa.Column("width", sa.Integer(), nullable=False),
    sa.Column("height", sa.Integer(), nullable=False),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.UniqueConstraint("product_id", "sha256"),
    sa.UniqueConstraint("public_id"),
    sa.Index("ix_reference_images_product_id", "product_id"),
    sa.Index("ix_reference_images_sha256", "sha256"),
    sqlite_autoincrement=True,
)


def _of_image(name: str, *columns: sa.Column[Any]) -> None:
    """A table of per-image data, keyed by the image (rows go with it)."""
    fk = sa.ForeignKey("reference_images.id", ondelete="CASCADE")
    sa.Table(name, schema, sa.Column("image_id", sa.Integer(), fk, primary_key=True), *columns)


_of_image(
    "image_embeddings",
    sa.Column("fingerprint", sa.String(64), primary_key=True),
    sa.Column("vector", sa.LargeBinary(), nullable=False),
)
_of_image(
    "image_details",
    sa.Column("fingerprint", sa.String(64), primary_key=True),
    sa.Column("layout", sa.String(40), nullable=False),
    sa.Column("features", sa.LargeBinary(), nullable=False),
)
_of_image("image_groups", sa.Column("name", sa.String(200), nullable=False))
_of_image("image_hashes", sa.Column("phash", sa.BigInteger(), nullable=False))
sa.Table(
    "catalog_state",
    schema,
    sa.Column("key", sa.String(40), primary_key=True),
    sa.Column("value", sa.Integer(), nullable=False),
)
sa.Table(
    "audit_log",
    schema,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime(), nullable=False),
    sa.Column("actor", sa.String(80), nullable=False),
    sa.Column("action", sa.String(60), nullable=False),
    sa.Column("target", sa.String(200)),
    sa.Column("brand", sa.String(200)),
    sa.Column("details", sa.JSON(), nullable=False),
    *(sa.Index(f"ix_audit_log_{name}", name) for name in ("at", "actor", "action", "brand")),
)

# --- scans ---------------------------------------------------------------------------------------------------------
sa.Table(
    "scan_records",
    schema,
    sa.Column("scan_id", sa.String(40), primary_key=True),
    sa.Column("listing_id", sa.String(200)),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.Column("verdict", sa.String(40), nullable=False),
    sa.Column("risk", sa.Float()),
    sa.Column("model_fingerprint", sa.String(64), nullable=False),
    sa.Column("index_version", sa.String(80), nullable=False),
    sa.Column("input_sha256", sa.JSON(), nullable=False),
    sa.Column("result", sa.JSON(), nullable=False),
    *(sa.Index(f"ix_scan_records_{name}", name) for name in ("listing_id", "created_at", "verdict")),
)
sa.Table(
    "scan_access",
    schema,
    sa.Column("scan_id", sa.String(40), sa.ForeignKey("scan_records.scan_id"), primary_key=True),
    sa.Column("created_by", sa.String(80), nullable=False),
    sa.Column("brands", sa.JSON(), nullable=False),
    sa.Index("ix_scan_access_created_by", "created_by"),
)
sa.Table(
    "scan_subjects",
    schema,
    sa.Column("scan_id", sa.String(40), primary_key=True),
    sa.Column("brand", sa.String(200), primary_key=True),
    sa.Column("product", sa.String(200), primary_key=True),
    sa.Index("ix_scan_subjects_brand_product", "brand", "product"),
)
sa.Table(
    "scan_brand_views",
    schema,
    sa.Column("scan_id", sa.String(40), primary_key=True),
    sa.Column("brand", sa.String(200), primary_key=True),
    sa.Column("verdict", sa.String(40), nullable=False),
    sa.Column("risk", sa.Float()),
)
sa.Table(
    "scan_feedback",
    schema,
    sa.Column("feedback_id", sa.String(40), primary_key=True),
    sa.Column("scan_id", sa.String(40), sa.ForeignKey("scan_records.scan_id"), nullable=False),
    sa.Column("verdict", sa.String(40), nullable=False),
    sa.Column("note", sa.String(2000)),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.Column("added_image_ids", sa.JSON(), nullable=False),
    sa.Column("index_version", sa.String(80)),
    sa.Index("ix_scan_feedback_scan_id", "scan_id"),
)
sa.Table(
    "scan_feedback_brands",
    schema,
    sa.Column("feedback_id", sa.String(40), sa.ForeignKey("scan_feedback.feedback_id"), primary_key=True),
    sa.Column("scan_id", sa.String(40), nullable=False),
    sa.Column("brand", sa.String(200), nullable=False),
    sa.Index("ix_scan_feedback_brands_scan_id", "scan_id"),
    sa.Index("ix_scan_feedback_brands_brand", "brand"),
)

# --- access, imports, console --------------------------------------------------------------------------------------
sa.Table(
    "api_keys",
    schema,
    sa.Column("key_id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("role", sa.String(20), nullable=False),
    sa.Column("brands", sa.JSON(), nullable=False),
    sa.Column("secret_sha256", sa.String(64), nullable=False),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.Column("revoked_at", sa.DateTime()),
)
sa.Table(
    "catalog_import_jobs",
    schema,
    sa.Column("job_id", sa.String(40), primary_key=True),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("created_by", sa.String(80), nullable=False),
    sa.Column("role", sa.String(20), nullable=False),
    sa.Column("brands", sa.JSON(), nullable=False),
    sa.Column("filename", sa.String(500)),
    sa.Column("archive_format", sa.String(10), nullable=False),
    sa.Column("archive_bytes", sa.Integer(), nullable=False),
    sa.Column("split", sa.String(200)),
    sa.Column("layout", sa.String(20)),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.Column("started_at", sa.DateTime()),
    sa.Column("finished_at", sa.DateTime()),
    sa.Column("rows_total", sa.Integer()),
    *(
        sa.Column(name, sa.Integer(), nullable=False)
        for name in ("rows_done", "position", "images_added", "duplicates_skipped", "error_count")
    ),
    sa.Column("errors", sa.JSON(), nullable=False),
    sa.Column("failure", sa.String(2000)),
    *(sa.Index(f"ix_catalog_import_jobs_{name}", name) for name in ("state", "created_by", "created_at")),
)
sa.Table(
    "console_sessions",
    schema,
    sa.Column("token_sha256", sa.String(64), primary_key=True),
    sa.Column("key_id", sa.String(80), nullable=False),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.Column("expires_at", sa.DateTime(), nullable=False),
    sa.Index("ix_console_sessions_key_id", "key_id"),
    sa.Index("ix_console_sessions_expires_at", "expires_at"),
)

AUDIT_TRIGGERS = [
    f"CREATE TRIGGER IF NOT EXISTS audit_log_no_{verb.lower()} BEFORE {verb} ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END"
    for verb in ("UPDATE", "DELETE")
]


def upgrade() -> None:
    bind = op.get_bind()
    existing = set(sa.inspect(bind).get_table_names())
    for table in schema.sorted_tables:  # referenced tables first
        if table.name not in existing:
            table.create(bind)  # with its indexes
            continue
        indexes = {index["name"] for index in sa.inspect(bind).get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in indexes:
                index.create(bind)
    if bind.dialect.name == "sqlite":  # other databases: privileges (INSERT and SELECT only on audit_log)
        for trigger in AUDIT_TRIGGERS:
            op.execute(trigger)
    if "scan_subjects" not in existing and "scan_records" in existing:
        _fill_scan_subjects(bind)


def _subjects(result: dict[str, Any]) -> list[tuple[str, str]]:
    """(brand, product) pairs of a scan's stored result, as this release's `service.scanning.records.scan_subjects`."""
    pairs = {(result["brand"], result.get("product") or "")} if result.get("brand") else set()
    for image in result["images"]:
        pairs.update((m["brand"], m["product"]) for m in image["matches"][:3])
        pairs.update((d["brand"], d["product"]) for d in image["near_duplicates"])
    return sorted(pairs)


def _fill_scan_subjects(bind: sa.Connection) -> None:
    """One row per (scan, brand, product) of every scan recorded before scan_subjects existed, 500 records a page."""
    records = schema.tables["scan_records"]
    subjects = schema.tables["scan_subjects"]
    last = ""
    while True:
        page = bind.execute(
            sa.select(records.c.scan_id, records.c.result).where(records.c.scan_id > last).order_by(records.c.scan_id).limit(500)
        ).all()
        if not page:
            return
        rows = [{"scan_id": scan_id, "brand": b, "product": p} for scan_id, result in page for b, p in _subjects(result)]
        if rows:
            bind.execute(sa.insert(subjects), rows)
        last = page[-1][0]


def downgrade() -> None:
    bind = op.get_bind()
    existing = set(sa.inspect(bind).get_table_names())
    for table in reversed(schema.sorted_tables):
        if table.name in existing:
            table.drop(bind)
