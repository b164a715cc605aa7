"""Alembic's environment: runs the migrations on the connection `service.db.migrate` hands over.

That connection already holds the database's write lock in an open transaction (see `migrate.upgrade`), so the
migrations run inside it and commit with it; there is no offline (--sql) mode and no alembic.ini. New revisions:

    from alembic import command
    from service.db.migrate import alembic_config
    command.revision(alembic_config(), "what changes")   # then write upgrade() by hand, dialect-neutral
"""

from __future__ import annotations

from alembic import context

from service.db.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through service.db.migrate (counterfeit-scan db upgrade), which opens the database")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
