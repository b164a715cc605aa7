"""/v1/catalog: add, list, fetch and delete reference images over the real app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from tests import imaging
from tests.helpers import add_reference, scan, sha256, stored_state
from tests.service.api.conftest import STRICT_MAX_BYTES, STRICT_MAX_PIXELS


@pytest.mark.both_databases
def test_add_then_repeat_then_conflicting_label(settings: Settings, client: TestClient, data_dir: Path) -> None:
    data = imaging.jpeg(1)
    created = add_reference(client, data, source="brand photo shoot")
    assert created["image_id"].startswith("ref_")
    assert created["sha256"] == sha256(data)
    assert (created["brand"], created["product"], created["label"]) == ("Acme", "runner", "authentic")
    assert (created["media_type"], created["width"], created["height"]) == ("image/jpeg", 96, 96)
    assert created["source"] == "brand photo shoot"
    assert created["duplicate"] is False
    assert created["index_version"].endswith("-r1")

    again = add_reference(client, data, expect=200)
    assert again["duplicate"] is True
    assert again["image_id"] == created["image_id"]
    assert again["index_version"] == created["index_version"]

    before = stored_state(client, settings)
    response = client.post(
        "/v1/catalog/images",
        files={"file": ("ref.jpg", data, "image/jpeg")},
        data={"brand": "Acme", "product": "runner", "label": "counterfeit"},
    )
    assert response.status_code == 409
    assert "already in the catalog as authentic" in response.json()["detail"]
    assert created["image_id"] in response.json()["detail"]
    assert stored_state(client, settings) == before
    assert before["index_size"] == 1


@pytest.mark.both_databases
def test_added_image_is_searchable_when_the_call_returns(client: TestClient) -> None:
    for seed in range(3):
        added = add_reference(client, imaging.jpeg(seed), label="counterfeit" if seed else "authentic")
        result = scan(client, [imaging.jpeg(seed)])
        top = result["images"][0]["matches"][0]
        assert top["image_id"] == added["image_id"]
        assert top["similarity"] > 0.999
        assert result["index_version"] == added["index_version"]


@pytest.mark.both_databases
def test_png_and_webp_references_keep_their_media_type(client: TestClient) -> None:
    png = add_reference(client, imaging.png(2), filename="a.png", content_type="image/png")
    webp = add_reference(client, imaging.webp(3), filename="a.webp", content_type="image/webp")
    assert png["media_type"] == "image/png"
    assert webp["media_type"] == "image/webp"
    content = client.get(f"/v1/catalog/images/{webp['image_id']}/content")
    assert content.headers["content-type"] == "image/webp"
    assert content.content == imaging.webp(3)


@pytest.mark.both_databases
def test_brands_and_products(client: TestClient) -> None:
    assert client.get("/v1/catalog/brands").json() == {"brands": []}
    add_reference(client, imaging.jpeg(1), brand="Acme", product="runner")
    add_reference(client, imaging.jpeg(2), brand="Acme", product="runner", label="counterfeit")
    add_reference(client, imaging.jpeg(3), brand="Acme", product="court", label="counterfeit")
    add_reference(client, imaging.jpeg(4), brand="Zeta", product="slide")

    brands = client.get("/v1/catalog/brands").json()["brands"]
    assert brands == [{"name": "Acme", "products": 2, "images": 3}, {"name": "Zeta", "products": 1, "images": 1}]

    acme = client.get("/v1/catalog/products", params={"brand": "Acme"}).json()["products"]
    assert acme == [
        {"brand": "Acme", "name": "court", "authentic": 0, "counterfeit": 1},
        {"brand": "Acme", "name": "runner", "authentic": 1, "counterfeit": 1},
    ]
    assert len(client.get("/v1/catalog/products").json()["products"]) == 3
    assert client.get("/v1/catalog/products", params={"brand": "Nobody"}).json() == {"products": []}

    listed = client.get("/v1/catalog/images", params={"brand": "Acme", "label": "counterfeit"}).json()
    assert listed["total"] == 2
    assert {i["product"] for i in listed["images"]} == {"runner", "court"}
    page = client.get("/v1/catalog/images", params={"limit": 1, "offset": 3}).json()
    assert page["total"] == 4 and len(page["images"]) == 1


@pytest.mark.both_databases
def test_get_image_and_its_content(client: TestClient) -> None:
    data = imaging.jpeg(5)
    added = add_reference(client, data, brand="Acme", product="runner", label="counterfeit")
    meta = client.get(f"/v1/catalog/images/{added['image_id']}")
    assert meta.status_code == 200
    got = meta.json()
    for key in ("image_id", "sha256", "brand", "product", "label", "media_type", "width", "height", "created_at"):
        assert got[key] == added[key], key
    assert got["created_at"].endswith("+00:00")
    content = client.get(f"/v1/catalog/images/{added['image_id']}/content")
    assert content.status_code == 200
    assert content.headers["content-type"] == "image/jpeg"
    assert content.content == data

    for path in ("/v1/catalog/images/ref_nope", "/v1/catalog/images/ref_nope/content"):
        missing = client.get(path)
        assert missing.status_code == 404
        assert "ref_nope" in missing.json()["detail"]


@pytest.mark.both_databases
def test_delete_removes_the_image_from_catalog_and_scans(client: TestClient, data_dir: Path) -> None:
    data = imaging.jpeg(6)
    doomed = add_reference(client, data)
    kept = add_reference(client, imaging.jpeg(7))
    blob = data_dir / "blobs" / doomed["sha256"][:2] / doomed["sha256"][2:4] / doomed["sha256"]
    assert blob.is_file()

    response = client.delete(f"/v1/catalog/images/{doomed['image_id']}")
    assert response.status_code == 200
    assert response.json()["deleted"] == doomed["image_id"]
    assert response.json()["index_version"].endswith("-r3")
    assert not blob.exists()

    second = client.delete(f"/v1/catalog/images/{doomed['image_id']}")
    assert second.status_code == 404
    assert client.get(f"/v1/catalog/images/{doomed['image_id']}").status_code == 404
    assert client.get("/readyz").json()["index_size"] == 1
    assert client.get("/v1/catalog/brands").json()["brands"] == [{"name": "Acme", "products": 1, "images": 1}]

    result = scan(client, [data])
    matched = {m["image_id"] for m in result["images"][0]["matches"]}
    assert doomed["image_id"] not in matched
    assert matched == {kept["image_id"]}

    readded = add_reference(client, data)  # can come back, with a new id
    assert readded["image_id"] != doomed["image_id"]
    assert client.get(f"/v1/catalog/images/{readded['image_id']}/content").content == data


@pytest.mark.both_databases
def test_bytes_shared_by_two_products_survive_one_delete(client: TestClient) -> None:
    data = imaging.jpeg(8)
    one = add_reference(client, data, product="runner")
    two = add_reference(client, data, product="court")
    assert one["image_id"] != two["image_id"] and two["duplicate"] is False
    assert client.delete(f"/v1/catalog/images/{one['image_id']}").status_code == 200
    assert client.get(f"/v1/catalog/images/{two['image_id']}/content").content == data


# --- bad input ------------------------------------------------------------------------------------------------------
GOOD = {"brand": "Acme", "product": "runner", "label": "authentic"}

BAD_UPLOADS: list[Any] = [
    pytest.param(
        ("x.txt", b"this is text, not a photo\n" * 10, "application/octet-stream"), GOOD, 400, "not a decodable", id="text-bytes"
    ),
    pytest.param(("x.jpg", b"this is text, not a photo\n" * 10, "image/jpeg"), GOOD, 400, "not a decodable", id="text-as-jpeg"),
    pytest.param(("x.jpg", b"", "image/jpeg"), GOOD, 400, "empty", id="empty-file"),
    pytest.param(("x.jpg", imaging.truncated_jpeg(), "image/jpeg"), GOOD, 400, "truncated", id="truncated-jpeg"),
    pytest.param(
        ("x.png", imaging.png(1, (160, 160)), "image/png"), GOOD, 413, f"larger than {STRICT_MAX_BYTES}", id="too-many-bytes"
    ),
    pytest.param(
        ("x.png", imaging.solid_png((2000, 2000)), "image/png"), GOOD, 413, f"limit is {STRICT_MAX_PIXELS}", id="too-many-pixels"
    ),
    pytest.param(
        ("x.png", imaging.png_claiming_size(100_000, 100_000), "image/png"), GOOD, 413, "pixels", id="decompression-bomb"
    ),
    pytest.param(("x.gif", imaging.gif(), "image/gif"), GOOD, 415, "content type", id="gif-declared"),
    pytest.param(("x.gif", imaging.gif(), "application/octet-stream"), GOOD, 415, "GIF", id="gif-bytes"),
    pytest.param(("x.bmp", imaging.bmp(), "application/octet-stream"), GOOD, 415, "BMP", id="bmp-bytes"),
    pytest.param(("x.jpg", imaging.jpeg(), "text/plain"), GOOD, 415, "text/plain", id="text-content-type"),
    pytest.param(("x.jpg", imaging.png(), "image/jpeg"), GOOD, 415, "declared image/jpeg", id="png-declared-jpeg"),
    pytest.param(("x.jpg", imaging.jpeg(), "image/jpeg"), {**GOOD, "label": "fake"}, 422, "label", id="unknown-label"),
    pytest.param(("x.jpg", imaging.jpeg(), "image/jpeg"), {**GOOD, "label": ""}, 422, "label", id="empty-label"),
    pytest.param(
        ("x.jpg", imaging.jpeg(), "image/jpeg"), {"product": "runner", "label": "authentic"}, 422, "brand", id="no-brand"
    ),
    pytest.param(("x.jpg", imaging.jpeg(), "image/jpeg"), {**GOOD, "brand": ""}, 422, "brand", id="empty-brand"),
    pytest.param(("x.jpg", imaging.jpeg(), "image/jpeg"), {**GOOD, "brand": "   "}, 422, "brand", id="blank-brand"),
    pytest.param(("x.jpg", imaging.jpeg(), "image/jpeg"), {**GOOD, "brand": "B" * 201}, 422, "brand", id="long-brand"),
    pytest.param(("x.jpg", imaging.jpeg(), "image/jpeg"), {**GOOD, "product": "a\x01b"}, 422, "control", id="control-chars"),
    pytest.param(("x.jpg", imaging.jpeg(), "image/jpeg"), {**GOOD, "source": "s" * 501}, 422, "source", id="long-source"),
    pytest.param(None, GOOD, 422, "file", id="no-file"),
]


@pytest.mark.parametrize(("upload", "form", "status", "words"), BAD_UPLOADS)
def test_bad_upload_is_rejected_and_writes_nothing(
    strict_settings: Settings,
    strict_client: TestClient,
    data_dir: Path,
    upload: tuple[str, bytes, str] | None,
    form: dict[str, str],
    status: int,
    words: str,
) -> None:
    existing = add_reference(strict_client, imaging.jpeg(42))
    before = stored_state(strict_client, strict_settings)

    response = strict_client.post("/v1/catalog/images", files={"file": upload} if upload else None, data=form)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    detail = response.json()["detail"]
    assert detail
    assert words in str(detail)
    assert stored_state(strict_client, strict_settings) == before

    # still serving: a good upload and a scan work afterwards
    added = add_reference(strict_client, imaging.jpeg(43))
    assert scan(strict_client, [imaging.jpeg(42)])["images"][0]["matches"][0]["image_id"] == existing["image_id"]
    assert stored_state(strict_client, strict_settings)["index_size"] == 2
    assert added["duplicate"] is False
