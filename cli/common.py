"""Helpers shared by the commands: settings from flags over the environment, and an engine that is always closed."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from embeddings import ModelLoadError
from service.config import Settings
from service.engine import ScanEngine


def make_settings(**flags: Any) -> Settings:
    """Settings from the environment, overridden by the flags that were given."""
    given = {key: value for key, value in flags.items() if value is not None}
    return Settings(**given)


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
