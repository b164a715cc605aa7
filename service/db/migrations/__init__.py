"""Alembic migrations of the catalog database (run through `service.db.migrate`; no alembic.ini)."""
