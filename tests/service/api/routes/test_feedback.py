"""POST /v1/scans/{scan_id}/feedback: recorded with the scan; confirmed fakes join the catalog at once."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests import imaging
from tests.helpers import add_reference, scan

pytestmark = pytest.mark.both_databases  # the tests that use the database run on SQLite and PostgreSQL


@pytest.fixture
def catalog(client: TestClient) -> dict[str, dict[str, Any]]:
    return {
        "runner-a": add_reference(client, imaging.jpeg(1), product="runner"),
        "court-c": add_reference(client, imaging.jpeg(4), product="court", label="counterfeit"),
        "slide-a": add_reference(client, imaging.jpeg(5), brand="Zeta", product="slide"),
    }


def feedback(client: TestClient, scan_id: str, expect: int = 201, **body: Any) -> Any:
    response = client.post(f"/v1/scans/{scan_id}/feedback", json=body)
    assert response.status_code == expect, response.text
    return response.json()


def test_confirmed_counterfeit_joins_the_catalog(client: TestClient, catalog: dict[str, dict[str, Any]]) -> None:
    photo = imaging.jpeg(7)
    flagged = scan(client, [photo], brand="Acme", product="court")
    assert flagged["verdict"] == "likely_counterfeit" and flagged["photos_kept"] is True
    before = client.get("/v1/catalog/products?brand=Acme").json()["products"]
    assert {p["name"]: p["counterfeit"] for p in before}["court"] == 1

    fb = feedback(client, flagged["scan_id"], verdict="confirmed_counterfeit", note="seller admitted it")
    assert fb["verdict"] == "confirmed_counterfeit" and len(fb["added_image_ids"]) == 1
    added = client.get(f"/v1/catalog/images/{fb['added_image_ids'][0]}").json()
    assert (added["label"], added["brand"], added["product"]) == ("counterfeit", "Acme", "court")
    assert added["source"] == f"scan:{flagged['scan_id']}"
    assert added["sha256"] == flagged["images"][0]["sha256"]

    # Searchable at once: the same photo now finds itself as a known fake, bit for bit.
    again = scan(client, [photo])
    assert again["images"][0]["matches"][0]["image_id"] == added["image_id"]
    assert again["images"][0]["matches"][0]["similarity"] > 0.99
    assert any(r["code"] == "near_duplicate_of_known_fake" for r in again["reasons"])

    record = client.get(f"/v1/scans/{flagged['scan_id']}").json()
    assert [f["feedback_id"] for f in record["feedback"]] == [fb["feedback_id"]]


def test_other_verdicts_are_recorded_only(client: TestClient, catalog: dict[str, dict[str, Any]]) -> None:
    result = scan(client, [imaging.jpeg(8)])
    size = client.get("/readyz").json()["index_size"]
    for verdict in ("confirmed_authentic", "not_applicable"):
        fb = feedback(client, result["scan_id"], verdict=verdict)
        assert fb["added_image_ids"] == []
    assert client.get("/readyz").json()["index_size"] == size
    assert [f["verdict"] for f in client.get(f"/v1/scans/{result['scan_id']}").json()["feedback"]] == [
        "confirmed_authentic",
        "not_applicable",
    ]


def test_bad_feedback_writes_nothing(client: TestClient, catalog: dict[str, dict[str, Any]]) -> None:
    feedback(client, "scan_does_not_exist", expect=404, verdict="confirmed_counterfeit")
    result = scan(client, [imaging.jpeg(9)], brand="Acme", product="court")
    invalid = feedback(client, result["scan_id"], expect=422, verdict="fake")
    assert invalid["errors"][0]["loc"] == ["body", "verdict"] and "body.verdict" in invalid["detail"]
    feedback(client, result["scan_id"], expect=422, verdict="confirmed_authentic", note="x" * 2001)
    assert client.get(f"/v1/scans/{result['scan_id']}").json()["feedback"] == []


def test_unkept_photos_cannot_be_confirmed(client: TestClient, catalog: dict[str, dict[str, Any]]) -> None:
    clean = scan(client, [imaging.jpeg(10)], brand="Acme", product="runner")
    assert clean["verdict"] == "likely_authentic" and clean["photos_kept"] is False  # policy keeps flagged scans only
    size = client.get("/readyz").json()["index_size"]
    detail = feedback(client, clean["scan_id"], expect=409, verdict="confirmed_counterfeit")["detail"]
    assert "POST /v1/catalog/images" in detail
    assert client.get("/readyz").json()["index_size"] == size
    assert client.get(f"/v1/scans/{clean['scan_id']}").json()["feedback"] == []


def test_confirming_a_reference_photo_as_fake_is_a_conflict(client: TestClient, catalog: dict[str, dict[str, Any]]) -> None:
    copied = scan(client, [imaging.jpeg(5)], brand="Zeta")  # the brand's own authentic photo, reused
    assert copied["verdict"] == "needs_review" and copied["photos_kept"] is True
    detail = feedback(client, copied["scan_id"], expect=409, verdict="confirmed_counterfeit")["detail"]
    assert "already in the catalog as authentic" in detail
    assert client.get("/v1/catalog/products?brand=Zeta").json()["products"][0]["counterfeit"] == 0
    # Another product may be named explicitly: then it is a new known fake there.
    fb = feedback(client, copied["scan_id"], verdict="confirmed_counterfeit", brand="Zeta", product="slide-copy")
    assert len(fb["added_image_ids"]) == 1
