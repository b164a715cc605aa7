"""Fixtures: image byte factories, settings in tmp dirs, one tiny embedder per session, cores and clients."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from embeddings import ImageEmbedder, load_embedder
from service.app import create_app
from service.config import Settings
from service.core import ServiceCore
from tests import imaging
from tests.bulk_scans import answers, build_catalog, by_listing, run, write_listings
from tests.helpers import read_rows, shared_set, tiny_settings

pytest_plugins = ["tests.postgres"]  # postgres_server (one per session), postgres_url (a fresh database per test)
BACKENDS = ("sqlite", "postgresql")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests (or modules) marked `both_databases` run once per backend: the `db_backend` fixture's value."""
    if metafunc.definition.get_closest_marker("both_databases") and "db_backend" in metafunc.fixturenames:
        metafunc.parametrize("db_backend", BACKENDS)


@pytest.fixture(autouse=True)
def _no_env_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's COUNTERFEIT_SCAN_* variables must not change what the tests run."""
    for key in list(os.environ):
        if key.startswith("COUNTERFEIT_SCAN_"):
            monkeypatch.delenv(key)


# --- images -----------------------------------------------------------------------------------------------------
@pytest.fixture
def jpeg_bytes() -> Callable[..., bytes]:
    return imaging.jpeg


@pytest.fixture
def png_bytes() -> Callable[..., bytes]:
    return imaging.png


@pytest.fixture
def webp_bytes() -> Callable[..., bytes]:
    return imaging.webp


# --- model, core, app -------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def model_export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-exports")


@pytest.fixture(scope="session")
def tiny_embedder(model_export_dir: Path) -> ImageEmbedder:
    """Loaded once per session (ONNX export included); cores share it."""
    return load_embedder(tiny_settings(model_export_dir).model_spec(), model_export_dir)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def db_backend() -> str:
    """The catalog database's backend: SQLite in the data dir, or PostgreSQL for tests marked `both_databases`."""
    return "sqlite"


@pytest.fixture
def database_url(db_backend: str, request: pytest.FixtureRequest) -> str | None:
    """None: the SQLite file in the data dir (the default); else a fresh PostgreSQL database."""
    if db_backend == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return None


@pytest.fixture
def settings(data_dir: Path, database_url: str | None) -> Settings:
    return tiny_settings(data_dir, **({"database_url": database_url} if database_url else {}))


@pytest.fixture
def make_core(tiny_embedder: ImageEmbedder) -> Iterator[Callable[[Settings], ServiceCore]]:
    """Open cores on a data dir (as a restart would: load or repair the saved index); all closed afterwards."""
    cores: list[ServiceCore] = []

    def make(settings: Settings) -> ServiceCore:
        core = ServiceCore(settings, tiny_embedder)
        core.index_keeper.sync()
        cores.append(core)
        return core

    yield make
    for core in cores:
        core.close()


@pytest.fixture
def core(make_core: Callable[[Settings], ServiceCore], settings: Settings) -> ServiceCore:
    return make_core(settings)


@pytest.fixture
def make_client(make_core: Callable[[Settings], ServiceCore]) -> Iterator[Callable[..., TestClient]]:
    """Start the real app (lifespan included) on a tiny core with the given settings."""
    with ExitStack() as stack:

        def make(settings: Settings, core: ServiceCore | None = None) -> TestClient:
            """A client that sends an admin key (the auth tests make keys of other roles themselves)."""
            core = core or make_core(settings)
            client = stack.enter_context(TestClient(create_app(settings, core=core)))
            _, token = core.keys.create("admin", [], "tests")
            client.headers["Authorization"] = f"Bearer {token}"
            return client

        yield make


@pytest.fixture
def client(make_client: Callable[..., TestClient], settings: Settings, core: ServiceCore) -> TestClient:
    return make_client(settings, core)


# --- shared photo data ------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def sneakers_dir() -> Path:
    return shared_set("sneakers")


@pytest.fixture(scope="session")
def sneaker_rows(sneakers_dir: Path) -> list[dict[str, str]]:
    return read_rows(sneakers_dir / "manifest.csv")


@pytest.fixture(scope="session")
def real_embedder(model_export_dir: Path) -> ImageEmbedder:
    """The offline default model (packaged EfficientNet-Lite0 ImageNet weights), loaded once."""
    return load_embedder(Settings(data_dir=model_export_dir).model_spec(), model_export_dir)


# --- scan-batch: the local engine and the Ray engine answer the same listings (tests/bulk_scans.py) ------------------
@pytest.fixture
def catalog(data_dir: Path) -> Path:
    """A data dir whose catalog holds tests/bulk_scans.py's reference photos (modules with their own `catalog` override it)."""
    build_catalog(data_dir)
    return data_dir


@pytest.fixture
def local_answers(catalog: Path, tmp_path: Path) -> dict[str, dict[str, Any]]:
    """The CSV manifest scanned by the local engine into JSON lines: what every other combination must answer."""
    out = tmp_path / "local.jsonl"
    result = run("scan-batch", str(write_listings(tmp_path / "csv", "csv")), "--out", str(out), data_dir=catalog)
    assert result.exit_code == 0, result.output
    return by_listing(answers(out))
