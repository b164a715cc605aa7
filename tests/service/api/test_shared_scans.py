"""A scan that concerns two brands: each brand sees and gives only its own reviews, and figures from its own evidence."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from reference_catalog import create_catalog_engine
from service.config import Settings
from service.core import ServiceCore
from tests import imaging
from tests.helpers import add_reference, tiny_settings
from tests.service.db.release import back_to_release

NIKE_NOTE = "NIKE-INTERNAL: seller 4411 is on our watch list"
PHOTO_NUMBERS = ("risk", "score", "head_probability", "nearest_authentic", "nearest_counterfeit", "margin")


@dataclass
class SharedScan:
    """Nike and Acme in one catalog; a scanner's scan of two photos, one Nike's (a re-encoded official photo), one a
    copy of a known Acme fake; a key per brand."""

    scan: dict[str, Any]
    nike: dict[str, str]
    acme: dict[str, str]
    scanner: dict[str, str]
    acme_fake: str


def bearer(core: ServiceCore, role: str, *brands: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {core.keys.create(role, list(brands), role)[1]}"}


def seed_shared_scan(client: TestClient, core: ServiceCore) -> SharedScan:
    add_reference(client, imaging.jpeg(11), brand="Nike", product="air-force-1")
    add_reference(client, imaging.jpeg(12), brand="Nike", product="air-force-1", label="counterfeit")
    add_reference(client, imaging.jpeg(13), brand="Acme", product="runner")
    acme_fake = add_reference(client, imaging.jpeg(14), brand="Acme", product="runner", label="counterfeit")["image_id"]
    scanner = bearer(core, "scanner")
    files = [("images", ("nike.jpg", imaging.jpeg(11, quality=70), "image/jpeg")),
             ("images", ("acme.jpg", imaging.jpeg(14), "image/jpeg"))]  # fmt: skip
    response = client.post("/v1/scan", headers=scanner, files=files)
    assert response.status_code == 200, response.text
    result = response.json()
    # The setting the issue describes: each photo's evidence (top_k=1) is its own brand's; the scan is kept.
    assert [[m["brand"] for m in image["matches"]] for image in result["images"]] == [["Nike"], ["Acme"]]
    assert result["images"][1]["near_duplicates"][0]["label"] == "counterfeit" and result["photos_kept"]
    return SharedScan(result, bearer(core, "brand", "Nike"), bearer(core, "brand", "Acme"), scanner, acme_fake)


@pytest.fixture
def shared_settings(data_dir: Any, database_url: str | None) -> Settings:
    return tiny_settings(data_dir, database_url=database_url, top_k=1)


@pytest.fixture
def shared_client(make_client: Callable[..., TestClient], make_core: Callable[[Settings], ServiceCore],
                  shared_settings: Settings) -> tuple[TestClient, ServiceCore]:  # fmt: skip
    core = make_core(shared_settings)
    return make_client(shared_settings, core), core


@pytest.mark.both_databases
def test_each_brand_sees_and_gives_only_its_own_feedback(shared_client: tuple[TestClient, ServiceCore]) -> None:
    client, core = shared_client
    shared = seed_shared_scan(client, core)
    scan_id = shared.scan["scan_id"]
    url = f"/v1/scans/{scan_id}"

    nike_fb = client.post(f"{url}/feedback", headers=shared.nike, json={
        "verdict": "confirmed_counterfeit", "note": NIKE_NOTE, "brand": "Nike", "product": "air-force-1"})  # fmt: skip
    assert nike_fb.status_code == 201, nike_fb.text
    nike_added = nike_fb.json()["added_image_ids"]
    # Only the photo that matches Nike's catalog joins it: the Acme photo is no business of Nike's.
    assert len(nike_added) == 1
    added = client.get(f"/v1/catalog/images/{nike_added[0]}").json()
    assert (added["brand"], added["sha256"]) == ("Nike", shared.scan["images"][0]["sha256"])

    acme_view = client.get(url, headers=shared.acme)
    assert acme_view.status_code == 200
    assert acme_view.json()["feedback"] == []
    assert NIKE_NOTE not in acme_view.text and nike_added[0] not in acme_view.text

    # Acme gives its own verdict: no 403, and nothing in the answer names Nike.
    acme_fb = client.post(
        f"{url}/feedback", headers=shared.acme, json={"verdict": "confirmed_counterfeit", "note": "acme saw it"}
    )
    assert acme_fb.status_code == 201, acme_fb.text
    assert "Nike" not in acme_fb.text
    acme_added = acme_fb.json()["added_image_ids"]
    assert len(acme_added) == 1
    assert client.get(f"/v1/catalog/images/{acme_added[0]}").json()["brand"] == "Acme"

    def notes(headers: dict[str, str] | None = None) -> list[str | None]:
        return [f["note"] for f in client.get(url, headers=headers).json()["feedback"]]

    assert notes(shared.acme) == ["acme saw it"]
    assert notes(shared.nike) == [NIKE_NOTE]
    assert notes() == [NIKE_NOTE, "acme saw it"]  # admin: all of it
    assert [f["brand"] for f in core.feedback.for_scan(scan_id)] == ["Nike", "Acme"]

    # Adding photos to another brand's catalog stays forbidden, in words that name no other brand.
    sneaky = client.post(f"{url}/feedback", headers=shared.acme,
                         json={"verdict": "confirmed_counterfeit", "brand": "Nike", "product": "air-force-1"})  # fmt: skip
    assert sneaky.status_code == 403 and "Nike" not in sneaky.json()["detail"]
    assert notes(shared.acme) == ["acme saw it"]


@pytest.mark.both_databases
def test_a_brand_sees_figures_computed_from_its_own_evidence(shared_client: tuple[TestClient, ServiceCore]) -> None:
    client, core = shared_client
    shared = seed_shared_scan(client, core)
    url = f"/v1/scans/{shared.scan['scan_id']}"
    full = client.get(url).json()
    assert full["features"]["near_dup_fake"] == 1.0 and full["images"][1]["nearest_counterfeit"] == 1.0  # admin: all

    nike = client.get(url, headers=shared.nike).json()
    acme_photo = nike["images"][1]
    assert acme_photo["matches"] == [] and acme_photo["near_duplicates"] == []
    assert {k: acme_photo[k] for k in PHOTO_NUMBERS} == dict.fromkeys(PHOTO_NUMBERS)
    assert acme_photo["in_catalog"] is False
    assert not [r for r in nike["reasons"] if r.get("photo") == 2]
    codes = {r["code"] for r in nike["reasons"]}
    assert "near_duplicate_of_known_fake" not in codes and "photos_disagree" not in codes
    assert "other_brands_evidence_removed" in codes
    assert nike["features"]["near_dup_fake"] == 0.0 and nike["features"]["max_score"] == 0.0
    assert shared.acme_fake not in str(nike)

    # Nike's figures are those of a scan of its photo alone, scored by the one scoring function.
    alone = client.post("/v1/scan", headers=shared.nike,
                        files=[("images", ("n.jpg", imaging.jpeg(11, quality=70), "image/jpeg"))]).json()  # fmt: skip
    assert (nike["risk"], nike["verdict"], nike["features"]) == (alone["risk"], alone["verdict"], alone["features"])
    assert nike["images"][0]["risk"] == alone["images"][0]["risk"] == 0.0

    acme = client.get(url, headers=shared.acme).json()
    assert acme["images"][0]["matches"] == [] and acme["images"][0]["risk"] is None
    assert acme["verdict"] == "likely_counterfeit" and acme["features"]["near_dup_fake"] == 1.0

    # The record itself is unchanged, and the scanner that made it reads it whole, as the admin does.
    assert client.get(url, headers=shared.scanner).json() == full == {**shared.scan, "feedback": []}


def test_feedback_from_before_brands_were_recorded(
    make_client: Callable[..., TestClient], make_core: Callable[[Settings], ServiceCore], shared_settings: Settings
) -> None:
    """A database made by the previous release (no scan_feedback_brands table) keeps working: its feedback, which names
    no brand, is shown to a brand on scans of its own only."""
    core = make_core(shared_settings)
    client = make_client(shared_settings, core)
    shared = seed_shared_scan(client, core)
    own = client.post("/v1/scan", headers=shared.acme, files=[("images", ("a.jpg", imaging.jpeg(14), "image/jpeg"))]).json()
    for scan_id in (shared.scan["scan_id"], own["scan_id"]):
        assert client.post(f"/v1/scans/{scan_id}/feedback", json={"verdict": "not_applicable", "note": "old"}).status_code == 201
    core.close()
    engine = create_catalog_engine(shared_settings.resolved_database_url)
    back_to_release(engine)  # the later revisions' tables and columns go too
    engine.dispose()
    with sqlite3.connect(shared_settings.storage.data_dir / "catalog.sqlite3") as db:
        db.execute("drop table scan_feedback_brands")
        db.execute("drop table alembic_version")  # that release had no migrations either

    reopened = make_core(shared_settings)
    again = make_client(shared_settings, reopened)
    assert [f["note"] for f in again.get(f"/v1/scans/{own['scan_id']}", headers=shared.acme).json()["feedback"]] == ["old"]
    assert again.get(f"/v1/scans/{shared.scan['scan_id']}", headers=shared.acme).json()["feedback"] == []
    assert [f["note"] for f in again.get(f"/v1/scans/{shared.scan['scan_id']}").json()["feedback"]] == ["old"]  # admin
    assert [f["brand"] for f in reopened.feedback.for_scan(shared.scan["scan_id"])] == [None]
    fb = again.post(f"/v1/scans/{shared.scan['scan_id']}/feedback", headers=shared.acme, json={"verdict": "not_applicable"})
    assert fb.status_code == 201
    assert [f["brand"] for f in reopened.feedback.for_scan(shared.scan["scan_id"], {"Acme"})] == ["Acme"]


@pytest.mark.both_databases
def test_each_brands_queue_and_dashboard_select_a_shared_scan_by_the_verdict_it_sees(
    shared_client: tuple[TestClient, ServiceCore],
) -> None:
    client, core = shared_client
    shared = seed_shared_scan(client, core)
    scan_id, stored = shared.scan["scan_id"], core.scans.get(shared.scan["scan_id"])
    assert stored is not None
    nike = client.get(f"/v1/scans/{scan_id}", headers=shared.nike).json()
    acme = client.get(f"/v1/scans/{scan_id}", headers=shared.acme).json()
    # Nike's photo re-uses Nike's official photo (review, risk 0); Acme's copies Acme's known fake (flagged, risk 1);
    # the whole record, as an admin sees it, sits between.
    assert (nike["verdict"], nike["risk"]) == ("needs_review", 0.0)
    assert (acme["verdict"], acme["risk"]) == ("likely_counterfeit", 1.0)
    assert (stored.verdict, stored.risk) == ("needs_review", 0.5)

    def found(verdicts: tuple[str, ...], brands: set[str] | None, min_risk: float | None = None) -> int:
        return core.scans.query(verdicts=verdicts, brands=brands, min_risk=min_risk)[1]

    assert found(("likely_counterfeit",), {"Acme"}) == 1 and found(("likely_counterfeit",), {"Nike"}) == 0
    assert found(("needs_review",), {"Nike"}, min_risk=0.3) == 0  # Nike's queue is not raised by Acme's evidence
    assert found(("needs_review",), None, min_risk=0.3) == 1  # the admin's, by the whole record
    since = datetime.now(UTC) - timedelta(days=1)
    assert [v for _, v, _ in core.scans.daily_counts(since, {"Nike"})] == ["needs_review"]
    assert [v for _, v, _ in core.scans.daily_counts(since, {"Acme"})] == ["likely_counterfeit"]
    assert [v for _, v, _ in core.scans.daily_counts(since)] == [stored.verdict]


@pytest.mark.both_databases
def test_the_scanner_reads_each_brands_verdict_but_not_its_note(shared_client: tuple[TestClient, ServiceCore]) -> None:
    client, core = shared_client
    shared = seed_shared_scan(client, core)
    url = f"/v1/scans/{shared.scan['scan_id']}"
    given = client.post(f"{url}/feedback", headers=shared.nike, json={
        "verdict": "confirmed_counterfeit", "note": NIKE_NOTE, "brand": "Nike", "product": "air-force-1"})  # fmt: skip
    assert given.status_code == 201 and given.json()["added_image_ids"]
    (seen,) = client.get(url, headers=shared.scanner).json()["feedback"]
    assert (seen["verdict"], seen["brand"], seen["note"], seen["added_image_ids"]) == ("confirmed_counterfeit", "Nike", None, [])
    (admin_view,) = client.get(url).json()["feedback"]
    assert admin_view["note"] == NIKE_NOTE and admin_view["added_image_ids"] == given.json()["added_image_ids"]
