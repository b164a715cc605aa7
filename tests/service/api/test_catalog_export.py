"""GET /v1/catalog/export: a brand's catalog as the archive POST /v1/catalog/imports reads back, brand-scoped."""

from __future__ import annotations

import csv
import io
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from fastapi.testclient import TestClient

from service.core import ServiceCore
from service.imports.export import catalog_refs, stream_catalog_archive, write_catalog_archive
from tests import imaging
from tests.helpers import add_reference, sha256, tiny_settings
from tests.service.api.imports_helpers import catalog_rows, import_archive


def seed(client: TestClient) -> None:
    add_reference(client, imaging.jpeg(1), "Acme", "runner", "authentic", source="studio shoot")
    add_reference(client, imaging.png(2), "Acme", "runner", "counterfeit", "fake.png", "image/png")
    add_reference(client, imaging.webp(3), "Acme", "trail", "authentic", "t.webp", "image/webp")
    add_reference(client, imaging.jpeg(1), "Acme", "trail", "authentic")  # the same bytes in a second product
    add_reference(client, imaging.jpeg(4), "Globex", "boot", "authentic")


def members_of(data: bytes, fmt: str) -> dict[str, bytes]:
    if fmt == "zip":
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            return {info.filename: zf.read(info) for info in zf.infolist()}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}  # type: ignore[union-attr]


@pytest.mark.parametrize("fmt", ["zip", "tar.gz"])
def test_export_then_import_into_a_fresh_service_gives_the_same_catalog(
    client: TestClient, make_client: Callable[..., TestClient], data_dir: Path, tmp_path: Path, fmt: str
) -> None:
    seed(client)
    response = client.get(f"/v1/catalog/export?brand=Acme&format={fmt}")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == ("application/zip" if fmt == "zip" else "application/gzip")
    assert f'filename="catalog-Acme.{fmt}"' in response.headers["content-disposition"]
    members = members_of(response.content, fmt)
    assert next(iter(members)) == "manifest.csv"
    manifest = list(csv.DictReader(io.StringIO(members["manifest.csv"].decode())))
    assert len(manifest) == 4 and {row["brand"] for row in manifest} == {"Acme"}
    assert len(members) == 1 + 3  # identical bytes in two products are stored once
    for row in manifest:
        assert sha256(members[row["path"]]) in row["path"]

    fresh_dir = tmp_path / "fresh"
    fresh = make_client(tiny_settings(fresh_dir))
    job = import_archive(fresh, response.content, f"acme.{fmt}")
    assert (job["state"], job["layout"], job["images_added"], job["errors"]) == ("succeeded", "manifest", 4, [])
    original = [row for row in catalog_rows(data_dir) if row[0] == "Acme"]
    assert catalog_rows(fresh_dir) == original  # brand, product, label, bytes and source
    assert ("Acme", "runner", "authentic", sha256(imaging.jpeg(1)), "studio shoot") in original


@pytest.mark.both_databases
def test_brand_keys_export_their_own_brands_only(client: TestClient, core: ServiceCore) -> None:
    seed(client)
    _, acme = core.keys.create("brand", ["Acme"], "acme")
    _, both = core.keys.create("brand", ["Acme", "Globex"], "holding")
    _, scanner = core.keys.create("scanner", [], "pipeline")

    def export(token: str, query: str = "") -> tuple[int, dict[str, bytes]]:
        response = client.get(f"/v1/catalog/export{query}", headers={"Authorization": f"Bearer {token}"})
        return response.status_code, members_of(response.content, "zip") if response.status_code == 200 else {}

    status, members = export(acme)  # its only brand by default
    assert status == 200 and len(members) == 4
    assert export(acme, "?brand=Acme")[1] == members
    assert export(acme, "?brand=Globex")[0] == 404  # like a brand that does not exist
    assert export(acme, "?brand=Nobody")[0] == 404
    assert export(both)[0] == 422  # several brands: say which
    assert len(export(both, "?brand=Globex")[1]) == 2
    assert export(scanner, "?brand=Acme")[0] == 403

    everything = members_of(client.get("/v1/catalog/export").content, "zip")  # admin, no brand: the whole catalog
    rows = list(csv.DictReader(io.StringIO(everything["manifest.csv"].decode())))
    assert {row["brand"] for row in rows} == {"Acme", "Globex"} and len(rows) == 5
    assert client.get("/v1/catalog/export?brand=Nobody").status_code == 404
    assert client.get("/v1/catalog/export?brand=Acme&format=rar").status_code == 422

    audit = client.get("/v1/audit?action=catalog.export").json()["entries"]
    assert {(entry["brand"], entry["details"]["images"]) for entry in audit} >= {("Acme", 4), ("Globex", 1), (None, 5)}


def test_write_catalog_archive_to_a_file(client: TestClient, core: ServiceCore, tmp_path: Path) -> None:
    seed(client)
    target = tmp_path / "globex.tar.gz"
    with open(target, "wb") as out:
        assert write_catalog_archive(core, "Globex", "tar.gz", out) == 1
    members = members_of(target.read_bytes(), "tar.gz")
    assert members[f"images/{sha256(imaging.jpeg(4))}.jpg"] == imaging.jpeg(4)


@pytest.mark.both_databases
def test_an_empty_brand_exports_just_a_manifest(client: TestClient, core: ServiceCore) -> None:
    added = add_reference(client, imaging.jpeg(5), "Initech", "stapler", "authentic")
    client.delete(f"/v1/catalog/images/{added['image_id']}")
    members = members_of(client.get("/v1/catalog/export?brand=Initech").content, "zip")
    assert members == {"manifest.csv": b"path,brand,product,label,source,group\n"}


def test_an_export_the_client_abandons_stops_writing(client: TestClient, core: ServiceCore) -> None:
    seed(client)
    refs = catalog_refs(core, "Acme")

    async def first_chunk_then_leave() -> bytes:
        stream = stream_catalog_archive(core, "Acme", "zip", refs, chunk_bytes=512)
        first = await anext(stream)
        await stream.aclose()  # what the server does when the client goes away
        return first

    assert anyio.run(first_chunk_then_leave).startswith(b"PK\x03\x04")
    deadline = time.monotonic() + 5
    while any(thread.name == "catalog-export" for thread in threading.enumerate()):
        assert time.monotonic() < deadline, "the export writer kept running after the client left"
        time.sleep(0.05)
