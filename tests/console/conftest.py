"""Fixtures for the console tests: the real app on a tiny engine, reached over https://testserver (Secure cookies)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.engine import ScanEngine
from tests.console.helpers import TwoBrands, seed_two_brands


@pytest.fixture
def console_app(settings: Settings, engine: ScanEngine) -> FastAPI:
    return create_app(settings, engine=engine)


@pytest.fixture
def web(console_app: FastAPI) -> Iterator[TestClient]:
    """A browser-like client: no API key header, cookies kept, https so that Secure cookies are sent back."""
    with TestClient(console_app, base_url="https://testserver") as client:
        yield client


@pytest.fixture
def brands(engine: ScanEngine) -> TwoBrands:
    return seed_two_brands(engine)
