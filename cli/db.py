"""`counterfeit-scan db`: the catalog database's schema revision, and migrating it by hand.

A started service or command migrates a database that is behind by itself; `db upgrade` does it ahead of time, e.g.
once before rolling out several replicas of a new release, so that none of them starts on the migration.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from sqlalchemy import make_url

from cli.common import make_settings
from cli.options import settings_options

storage_options = settings_options("storage")  # --data-dir and --database-url: all that opening the database takes


@click.group("db")
def database() -> None:
    """The catalog database's schema: its revision, and upgrading it to this release's."""


@database.command("upgrade")
@storage_options
def db_upgrade(**flags: Any) -> None:
    """Migrate the database to this release's schema (a no-op when it is there); prints the revisions."""
    from reference_catalog import create_catalog_engine
    from service.db.migrate import UnknownRevision, upgrade

    settings = make_settings(**flags)
    settings.storage.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_catalog_engine(settings.resolved_database_url)
    try:
        before, after = upgrade(engine)
    except UnknownRevision as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        engine.dispose()
    click.echo(json.dumps({"from_revision": before, "to_revision": after, "upgraded": before != after}, indent=2))


@database.command("current")
@storage_options
def db_current(**flags: Any) -> None:
    """The database's revision, this release's (head) and whether the database is behind; changes nothing."""
    from reference_catalog import create_catalog_engine
    from service.db.migrate import current_revision, head_revision

    url = make_settings(**flags).resolved_database_url
    revision = None
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or Path(parsed.database).exists():  # never create one
        engine = create_catalog_engine(url)
        try:
            revision = current_revision(engine)
        finally:
            engine.dispose()
    head = head_revision()
    click.echo(json.dumps({"revision": revision, "head": head, "behind": revision != head}, indent=2))
