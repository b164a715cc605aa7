"""HTTP shortcuts for the import and export tests: submit an archive, wait for its job, read the catalog back."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from tests import imaging

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


def catalog_rows(data_dir: Path) -> list[tuple[str, str, str, str, str | None]]:
    """(brand, product, label, sha256, source) of every reference image, sorted."""
    with sqlite3.connect(data_dir / "catalog.sqlite3") as db:
        rows = db.execute(
            "select b.name, p.name, i.label, i.sha256, i.source from reference_images i "
            "join products p on p.id = i.product_id join brands b on b.id = p.brand_id"
        ).fetchall()
    return sorted(rows)


def catalog_revision(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "catalog.sqlite3") as db:
        row = db.execute("select value from catalog_state where key = 'revision'").fetchone()
    return int(row[0]) if row else 0


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
