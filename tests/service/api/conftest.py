"""Fixtures for the HTTP tests: a client with small input limits, so oversized inputs stay cheap to make."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from tests.helpers import tiny_settings

STRICT_MAX_BYTES = 40_000
STRICT_MAX_PIXELS = 1_000_000


@pytest.fixture
def strict_settings(data_dir: Path, database_url: str | None) -> Settings:
    """On PostgreSQL too for tests marked `both_databases` (tests/conftest.py)."""
    return tiny_settings(
        data_dir, database_url=database_url, max_image_bytes=STRICT_MAX_BYTES, max_image_pixels=STRICT_MAX_PIXELS
    )


@pytest.fixture
def strict_client(make_client: Callable[..., TestClient], strict_settings: Settings) -> TestClient:
    return make_client(strict_settings)
