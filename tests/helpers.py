"""Small helpers shared by the tests: the shared photo data, HTTP shortcuts, and what the service has stored."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from reference_catalog import create_catalog_engine
from service.access.api_keys import ApiKeyStore
from service.config import Settings
from service.db.migrate import upgrade_if_behind

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


# batch_max_size explicit: the default (0) measures the model at every start, a second per app in a suite of hundreds
TINY_MODEL: dict[str, Any] = {"model": "cs-tiny-vit", "pretrained": None, "allow_random_weights": True, "batch_max_size": 16}
TINY_MODEL_FLAGS = ["--model", "cs-tiny-vit", "--pretrained", "", "--allow-random-weights"]


# The `model` of a scan result built by hand in a test (what a scan record stores of the model that answered).
STORED_MODEL: dict[str, Any] = {
    "architecture": "tiny", "weights": "random", "fingerprint": "f" * 64, "dim": 8, "runtime": "onnx", "random_weights": True,
}  # fmt: skip


def tiny_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for the tiny registered open_clip config with seeded random weights (tests only)."""
    return Settings(**{**TINY_MODEL, "data_dir": data_dir, **overrides})


def admin_token(settings: Settings) -> str:
    """An admin API key in the data directory's database (for apps the fixtures do not build)."""
    settings.storage.data_dir.mkdir(parents=True, exist_ok=True)
    db = create_catalog_engine(settings.resolved_database_url)
    try:
        upgrade_if_behind(db)  # as a starting service or CLI command would
        return ApiKeyStore(db).create("admin", [], "tests")[1]
    finally:
        db.dispose()


def catalog_url(where: Path | Settings) -> str:
    """The catalog database of a data directory (its SQLite file) or of settings (SQLite or PostgreSQL)."""
    return where.resolved_database_url if isinstance(where, Settings) else f"sqlite:///{where / 'catalog.sqlite3'}"


def query_catalog(where: Path | Settings, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """Rows of one SELECT on the catalog database, read as another process would (either backend)."""
    engine = create_catalog_engine(catalog_url(where))
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(sql), params)]
    finally:
        engine.dispose()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def shared_set(name: str) -> Path:
    """The folder of one shared data set, or skip the test with the reason."""
    folder = SHARED_DATA / name
    if not (folder / "manifest.csv").is_file():
        pytest.skip(f"shared data set not found: {folder / 'manifest.csv'} (expected ../shared/data next to the repo)")
    return folder


def read_rows(manifest: Path) -> list[dict[str, str]]:
    with open(manifest, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def pick_sneakers(rows: list[dict[str, str]], n: int, split: str = "reference") -> list[dict[str, str]]:
    """`n` photos of `split`, one per group (no two shots of one photo session), spread over the four classes."""
    per_class = -(-n // 4)
    chosen: list[dict[str, str]] = []
    groups: set[str] = set()
    counts: dict[tuple[str, str], int] = {}
    for row in rows:
        cls = (row["product"], row["label"])
        if row["split"] != split or row["group"] in groups or counts.get(cls, 0) >= per_class:
            continue
        groups.add(row["group"])
        counts[cls] = counts.get(cls, 0) + 1
        chosen.append(row)
        if len(chosen) == n:
            break
    assert len(chosen) == n, f"only {len(chosen)} distinct-group {split} photos found"
    return chosen


def add_reference(
    client: TestClient,
    data: bytes,
    brand: str = "Acme",
    product: str = "runner",
    label: str = "authentic",
    filename: str = "ref.jpg",
    content_type: str = "image/jpeg",
    expect: int = 201,
    **form: str,
) -> dict[str, Any]:
    response = client.post(
        "/v1/catalog/images",
        files={"file": (filename, data, content_type)},
        data={"brand": brand, "product": product, "label": label, **form},
    )
    assert response.status_code == expect, response.text
    body: dict[str, Any] = response.json()
    return body


def scan(client: TestClient, photos: list[bytes], expect: int = 200, content_type: str = "image/jpeg", **form: str) -> Any:
    files = [("images", (f"photo{i}.jpg", data, content_type)) for i, data in enumerate(photos)]
    response = client.post("/v1/scan", files=files, data=form)
    assert response.status_code == expect, response.text
    return response.json()


def stored_state(client: TestClient, where: Path | Settings) -> dict[str, Any]:
    """Everything a rejected request must leave untouched: catalog, index, blobs, scan records. `where`: the data
    directory of a SQLite catalog, or the settings (either database)."""
    ready = client.get("/readyz").json()
    [(images, scans)] = query_catalog(
        where, "select (select count(*) from reference_images), (select count(*) from scan_records)"
    )
    data_dir = where.storage.data_dir if isinstance(where, Settings) else where
    blobs = sorted(p.name for p in (data_dir / "blobs").rglob("*") if p.is_file()) if (data_dir / "blobs").exists() else []
    return {
        "brands": client.get("/v1/catalog/brands").json(),
        "products": client.get("/v1/catalog/products").json(),
        "index_size": ready["index_size"],
        "index_version": ready["index_version"],
        "images": images,
        "scans": scans,
        "blobs": blobs,
    }
