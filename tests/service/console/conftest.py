"""Fixtures for the console tests: the real app on a tiny core, reached over https://testserver (Secure cookies)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.core import ServiceCore
from tests.service.console.helpers import TwoBrands, seed_two_brands


@pytest.fixture
def console_app(settings: Settings, core: ServiceCore) -> FastAPI:
    return create_app(settings, core=core)


@pytest.fixture
def web(console_app: FastAPI) -> Iterator[TestClient]:
    """A browser-like client: no API key header, cookies kept, https so that Secure cookies are sent back."""
    with TestClient(console_app, base_url="https://testserver") as client:
        yield client


@pytest.fixture
def brands(core: ServiceCore) -> TwoBrands:
    return seed_two_brands(core)
