"""Helpers shared by the commands: settings from flags over the environment, and an engine that is always closed."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from embeddings import ModelLoadError
from service.config import Settings
from service.engine import ScanEngine

if TYPE_CHECKING:
    from reference_catalog import AuditLog
    from service.access.api_keys import ApiKeyStore


def make_settings(**flags: Any) -> Settings:
    """Settings from the environment, overridden by the flags that were given."""
    given = {key: value for key, value in flags.items() if value is not None}
    return Settings(**given)


@contextmanager
def open_catalog(settings: Settings) -> Iterator[tuple[ApiKeyStore, AuditLog]]:
    """The key store and audit log of a data directory, without loading a model."""
    from reference_catalog import AuditLog, CatalogRepository, create_catalog_engine
    from service.access.api_keys import ApiKeyStore

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = create_catalog_engine(settings.resolved_database_url)
    CatalogRepository(db).create_schema()
    try:
        yield ApiKeyStore(db), AuditLog(db)
    finally:
        db.dispose()


@contextmanager
def open_engine(settings: Settings) -> Iterator[ScanEngine]:
    try:
        engine = ScanEngine.open(settings, show_progress=sys.stderr.isatty())
    except ModelLoadError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        yield engine
    finally:
        engine.close()
