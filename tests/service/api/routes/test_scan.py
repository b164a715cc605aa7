"""POST /v1/scan over the real app: response contract, scoping, scoring ends, self-matches and bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests import imaging
from tests.helpers import add_reference, pick_sneakers, scan, sha256, stored_state
from tests.service.api.conftest import STRICT_MAX_BYTES, STRICT_MAX_PIXELS


@pytest.fixture
def catalog(client: TestClient) -> dict[str, dict[str, Any]]:
    """Acme/runner: 2 authentic + 1 counterfeit; Acme/court: 1 counterfeit; Zeta/slide: 1 authentic."""
    return {
        "runner-a1": add_reference(client, imaging.jpeg(1), product="runner"),
        "runner-a2": add_reference(client, imaging.jpeg(2), product="runner"),
        "runner-c": add_reference(client, imaging.jpeg(3), product="runner", label="counterfeit"),
        "court-c": add_reference(client, imaging.jpeg(4), product="court", label="counterfeit"),
        "slide-a": add_reference(client, imaging.jpeg(5), brand="Zeta", product="slide"),
    }


@pytest.mark.both_databases
def test_scan_response_contract(client: TestClient, catalog: dict[str, dict[str, Any]]) -> None:
    query = imaging.jpeg(3)
    result = scan(client, [query], listing_id="listing-77")
    assert result["scan_id"].startswith("scan_")
    assert result["listing_id"] == "listing-77"
    assert result["verdict"] in {"likely_counterfeit", "needs_review", "likely_authentic", "not_in_catalog"}
    assert result["risk"] is None or 0.0 <= result["risk"] <= 1.0
    assert result["calibrated"] is False
    assert (result["brand"], result["product"]) == (None, None)
    ready = client.get("/readyz").json()
    assert result["index_version"] == ready["index_version"]
    model = result["model"]
    assert model == ready["model"]
    assert model["architecture"] == "cs-tiny-vit" and model["random_weights"] is True and model["dim"] == 32
    assert result["reasons"][0]["code"] == "random_model_weights" and "meaningless" in result["reasons"][0]["message"]

    (photo,) = result["images"]
    assert photo["sha256"] == sha256(query)
    matches = photo["matches"]
    assert len(matches) == 5  # top_k 10 > catalog size: everything, best first
    assert set(matches[0]) == {"image_id", "brand", "product", "label", "similarity"}
    assert matches[0]["image_id"] == catalog["runner-c"]["image_id"]
    assert (matches[0]["brand"], matches[0]["product"], matches[0]["label"]) == ("Acme", "runner", "counterfeit")
    assert matches[0]["similarity"] == pytest.approx(1.0, abs=1e-4)
    sims = [m["similarity"] for m in matches]
    assert sims == sorted(sims, reverse=True)
    assert photo["nearest_counterfeit"] == pytest.approx(matches[0]["similarity"])
    assert photo["in_catalog"] is True


def test_scan_takes_up_to_ten_photos_in_order(client: TestClient, catalog: dict[str, dict[str, Any]]) -> None:
    photos = [imaging.jpeg(100 + i) for i in range(10)]
    result = scan(client, photos)
    assert [image["sha256"] for image in result["images"]] == [sha256(p) for p in photos]


def test_jpeg_png_and_webp_photos(client: TestClient, catalog: dict[str, dict[str, Any]]) -> None:
    files = [
        ("images", ("a.jpg", imaging.jpeg(9), "image/jpeg")),
        ("images", ("b.png", imaging.png(9), "image/png")),
        ("images", ("c.webp", imaging.webp(9), "image/webp")),
    ]
    response = client.post("/v1/scan", files=files)
    assert response.status_code == 200, response.text
    assert len(response.json()["images"]) == 3


@pytest.mark.both_databases
def test_brand_and_product_restrict_the_matches(client: TestClient, catalog: dict[str, dict[str, Any]]) -> None:
    query = imaging.jpeg(5)  # the Zeta reference
    acme = scan(client, [query], brand="Acme")
    assert acme["brand"] == "Acme"
    assert {m["brand"] for m in acme["images"][0]["matches"]} == {"Acme"}
    assert len(acme["images"][0]["matches"]) == 4

    court = scan(client, [query], brand="Acme", product="court")
    assert [m["image_id"] for m in court["images"][0]["matches"]] == [catalog["court-c"]["image_id"]]

    product_only = scan(client, [query], product="runner")
    assert {m["product"] for m in product_only["images"][0]["matches"]} == {"runner"}

    zeta = scan(client, [query], brand="Zeta")
    assert zeta["images"][0]["matches"][0]["image_id"] == catalog["slide-a"]["image_id"]


def test_scope_with_no_references_is_not_in_catalog(client: TestClient, catalog: dict[str, dict[str, Any]]) -> None:
    result = scan(client, [imaging.jpeg(1)], brand="Nobody")
    assert result["verdict"] == "not_in_catalog"
    assert result["risk"] is None
    assert result["images"][0]["matches"] == []
    assert any("no reference images for Nobody" in reason["message"] for reason in result["reasons"])


def test_empty_catalog_is_not_in_catalog(client: TestClient) -> None:
    result = scan(client, [imaging.jpeg(1)])
    assert (result["verdict"], result["risk"]) == ("not_in_catalog", None)
    assert result["images"][0]["in_catalog"] is False
    assert result["index_version"].endswith("-r0")


def test_risk_follows_the_labels_of_the_matches(client: TestClient, catalog: dict[str, dict[str, Any]]) -> None:
    fake = scan(client, [imaging.jpeg(4)], brand="Acme", product="court")  # only a known fake in scope
    assert (fake["risk"], fake["verdict"]) == (1.0, "likely_counterfeit")
    genuine = scan(client, [imaging.jpeg(6)], brand="Zeta")  # only an authentic reference in scope
    assert genuine["images"][0]["in_catalog"] is True
    assert (genuine["risk"], genuine["verdict"]) == (0.0, "likely_authentic")
    # The brand's own photo reused in a listing: authentic-looking, but flagged for a reviewer.
    copied = scan(client, [imaging.jpeg(5)], brand="Zeta")
    assert (copied["risk"], copied["verdict"]) == (0.0, "needs_review")
    reused = [r for r in copied["reasons"] if r["code"] == "reused_official_photo"]
    assert reused and reused[0]["image_id"] == catalog["slide-a"]["image_id"] and reused[0]["distance"] == 0
    assert copied["images"][0]["near_duplicates"][0]["label"] == "authentic"
    both = scan(client, [imaging.jpeg(4), imaging.jpeg(5)], brand="Zeta")
    assert both["risk"] == 0.0


def test_reference_photos_find_themselves(client: TestClient, sneakers_dir: Path, sneaker_rows: list[dict[str, str]]) -> None:
    """The same real files as references and as queries: each is its own top match."""
    rows = pick_sneakers(sneaker_rows, 10)
    photos = [(sneakers_dir / row["path"]).read_bytes() for row in rows]
    ids = [
        add_reference(
            client, data, brand=row["brand"], product=row["product"], label=row["label"], filename=Path(row["path"]).name
        )["image_id"]
        for row, data in zip(rows, photos, strict=True)
    ]
    result = scan(client, photos)
    for image_id, data, image in zip(ids, photos, result["images"], strict=True):
        assert image["sha256"] == sha256(data)
        assert image["matches"][0]["image_id"] == image_id
        assert image["matches"][0]["similarity"] > 0.99


# --- bad input -------------------------------------------------------------------------------------------------------
def photo(data: bytes, content_type: str = "image/jpeg", name: str = "p.jpg") -> tuple[str, tuple[str, bytes, str]]:
    return ("images", (name, data, content_type))


BAD_SCANS: list[Any] = [
    pytest.param(
        [photo(b"plain text, not an image\n" * 5, "application/octet-stream")], {}, 400, "not a decodable", id="text-bytes"
    ),
    pytest.param([photo(imaging.truncated_jpeg())], {}, 400, "truncated", id="truncated-jpeg"),
    pytest.param(
        [photo(imaging.png(1, (256, 256)), "image/png")], {}, 413, f"larger than {STRICT_MAX_BYTES}", id="too-many-bytes"
    ),
    pytest.param(
        [photo(imaging.solid_png((2000, 2000)), "image/png")], {}, 413, f"limit is {STRICT_MAX_PIXELS}", id="too-many-pixels"
    ),
    pytest.param([photo(imaging.png_claiming_size(100_000, 100_000), "image/png")], {}, 413, "pixels", id="decompression-bomb"),
    pytest.param([photo(imaging.gif(), "image/gif")], {}, 415, "image/gif", id="gif"),
    pytest.param([photo(imaging.bmp(), "application/octet-stream")], {}, 415, "BMP", id="bmp-bytes"),
    pytest.param([photo(imaging.jpeg(), "text/plain")], {}, 415, "text/plain", id="text-content-type"),
    pytest.param([photo(imaging.webp(), "image/png")], {}, 415, "WEBP", id="webp-declared-png"),
    pytest.param([photo(imaging.jpeg(i)) for i in range(11)], {}, 400, "at most 10", id="eleven-photos"),
    pytest.param([], {"brand": "Acme"}, 422, "images", id="no-images"),
    pytest.param(
        [photo(imaging.jpeg(1)), photo(imaging.truncated_jpeg(), name="broken.jpg")],
        {},
        400,
        "photo 2 (broken.jpg)",
        id="second-photo-bad",
    ),
    pytest.param([photo(imaging.jpeg())], {"brand": "   "}, 422, "brand", id="blank-brand"),
    pytest.param([photo(imaging.jpeg())], {"brand": "B" * 201}, 422, "brand", id="long-brand"),
    pytest.param([photo(imaging.jpeg())], {"listing_id": "L" * 201}, 422, "listing_id", id="long-listing-id"),
]


@pytest.mark.parametrize(("files", "form", "status", "words"), BAD_SCANS)
def test_bad_scan_is_rejected_and_records_nothing(
    strict_client: TestClient, data_dir: Path, files: list[Any], form: dict[str, str], status: int, words: str
) -> None:
    reference = add_reference(strict_client, imaging.jpeg(1))
    before = stored_state(strict_client, data_dir)

    response = strict_client.post("/v1/scan", files=files or None, data=form)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert words in str(response.json()["detail"])
    assert stored_state(strict_client, data_dir) == before

    good = scan(strict_client, [imaging.jpeg(1)])
    assert good["images"][0]["matches"][0]["image_id"] == reference["image_id"]
    assert stored_state(strict_client, data_dir)["scans"] == before["scans"] + 1
