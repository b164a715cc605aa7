"""HTTP shortcuts for the import and export tests: submit an archive, wait for its job, read the catalog back."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from service.config import Settings
from tests import imaging
from tests.helpers import query_catalog

FINISHED = ("succeeded", "failed")


def submit(
    client: TestClient,
    data: bytes,
    filename: str = "catalog.zip",
    expect: int = 202,
    token: str | None = None,
    **form: str,
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = client.post(
        "/v1/catalog/imports", files={"archive": (filename, data, "application/octet-stream")}, data=form, headers=headers
    )
    assert response.status_code == expect, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_for(client: TestClient, job_id: str, token: str | None = None, timeout_s: float = 30.0) -> dict[str, Any]:
    """Poll the job until it has finished; returns its last state."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    deadline = time.monotonic() + timeout_s
    while True:
        response = client.get(f"/v1/catalog/imports/{job_id}", headers=headers)
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        if job["state"] in FINISHED:
            return job
        assert time.monotonic() < deadline, f"job {job_id} did not finish in {timeout_s} s: {job}"
        time.sleep(0.05)


def import_archive(client: TestClient, data: bytes, filename: str = "catalog.zip", **form: str) -> dict[str, Any]:
    return wait_for(client, submit(client, data, filename, 202, None, **form)["job_id"])


def catalog_rows(where: Path | Settings) -> list[tuple[str, str, str, str, str | None]]:
    """(brand, product, label, sha256, source) of every reference image, sorted; `where`: the data directory of a
    SQLite catalog, or the settings (either database)."""
    rows = query_catalog(
        where,
        "select b.name, p.name, i.label, i.sha256, i.source from reference_images i "
        "join products p on p.id = i.product_id join brands b on b.id = p.brand_id",
    )
    return sorted((str(r[0]), str(r[1]), str(r[2]), str(r[3]), r[4]) for r in rows)


def catalog_revision(where: Path | Settings) -> int:
    rows = query_catalog(where, "select value from catalog_state where key = 'revision'")
    return int(rows[0][0]) if rows else 0


def leftovers(data_dir: Path, settle_s: float = 2.0) -> list[str]:
    """What import jobs left under data/imports: nothing once they have finished (they clean up just after the job
    says so, hence a moment's grace)."""
    folder = data_dir / "imports"
    deadline = time.monotonic() + settle_s
    while True:
        names = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        if not names or time.monotonic() > deadline:
            return names
        time.sleep(0.02)


def photos(count: int, start: int = 0) -> list[bytes]:
    """Distinct real photos: JPEG, PNG and WebP in turn."""
    makers = (imaging.jpeg, imaging.png, imaging.webp)
    return [makers[i % 3](start + i) for i in range(count)]


SUFFIX = (".jpg", ".png", ".webp")


def folder_members(brand: str, product: str, label: str, images: list[bytes], start: int = 0) -> list[tuple[str, bytes]]:
    return [(f"{brand}/{product}/{label}/p{start + i}{SUFFIX[i % 3]}", data) for i, data in enumerate(images)]
