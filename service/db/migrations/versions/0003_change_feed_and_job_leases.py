"""Several service replicas on one catalog: the catalog's change feed (`catalog_changes`: what each revision added,
relabelled or deleted) and import job leases (`claimed_by`, `lease_until`: one replica runs a job; another takes it
over once the lease lapses). The feed starts at the catalog's current revision (`catalog_state.changes_from`): a
replica whose index is older than that re-syncs from the catalog once.

Revision ID: 0003_change_feed
Revises: 0002_postgres_audit
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_change_feed"
down_revision: str | None = "0002_postgres_audit"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "catalog_changes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("image_key", sa.BigInteger(), nullable=False),
        sa.Column("action", sa.String(10), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_catalog_changes_revision", "catalog_changes", ["revision"])
    with op.batch_alter_table("catalog_import_jobs") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(120), nullable=True))
        batch.add_column(sa.Column("lease_until", sa.DateTime(), nullable=True))
    state = sa.table("catalog_state", sa.column("key", sa.String), sa.column("value", sa.Integer))
    bind = op.get_bind()
    current = bind.execute(sa.select(state.c.value).where(state.c.key == "revision")).scalar() or 0
    bind.execute(state.delete().where(state.c.key == "changes_from"))
    bind.execute(state.insert().values(key="changes_from", value=current))


def downgrade() -> None:
    with op.batch_alter_table("catalog_import_jobs") as batch:
        batch.drop_column("lease_until")
        batch.drop_column("claimed_by")
    op.drop_index("ix_catalog_changes_revision", "catalog_changes")
    op.drop_table("catalog_changes")
    op.execute("DELETE FROM catalog_state WHERE key = 'changes_from'")
