"""Helpers shared by the commands: settings from flags over the environment, and the service core, always closed."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from embeddings import ModelLoadError
from service.config import Settings
from service.core import ServiceCore
from service.db.migrate import UnknownRevision, upgrade_if_behind

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from reference_catalog import AuditLog
    from service.access.api_keys import ApiKeyStore


def make_settings(**flags: Any) -> Settings:
    """Settings from the environment, overridden by the flags that were given."""
    given = {key: value for key, value in flags.items() if value is not None}
    return Settings(**given)


@contextmanager
def open_database(settings: Settings) -> Iterator[Engine]:
    """The catalog database of a data directory, migrated first if it is behind (as the service does at start)."""
    from reference_catalog import create_catalog_engine

    settings.storage.data_dir.mkdir(parents=True, exist_ok=True)
    db = create_catalog_engine(settings.resolved_database_url)
    try:
        try:
            upgrade_if_behind(db)
        except UnknownRevision as exc:
            raise click.ClickException(str(exc)) from exc
        yield db
    finally:
        db.dispose()


@contextmanager
def open_catalog(settings: Settings) -> Iterator[tuple[ApiKeyStore, AuditLog]]:
    """The key store and audit log of a data directory, without loading a model."""
    from reference_catalog import AuditLog
    from service.access.api_keys import ApiKeyStore

    with open_database(settings) as db:
        yield ApiKeyStore(db), AuditLog(db)


@contextmanager
def open_core(settings: Settings) -> Iterator[ServiceCore]:
    try:
        core = ServiceCore.open(settings, show_progress=sys.stderr.isatty())
    except (ModelLoadError, UnknownRevision) as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        yield core
    finally:
        core.close()
