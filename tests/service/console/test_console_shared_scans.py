"""The console on a scan that concerns two brands: each brand's reviews, queue and dashboard are its own."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.core import ServiceCore
from tests.helpers import tiny_settings
from tests.service.api.test_shared_scans import NIKE_NOTE, SharedScan, seed_shared_scan
from tests.service.console.helpers import page_csrf, sign_in

pytestmark = pytest.mark.both_databases  # the tests that use the database run on SQLite and PostgreSQL


@pytest.fixture
def settings(data_dir: Path, database_url: str | None) -> Settings:
    return tiny_settings(
        data_dir, database_url=database_url, top_k=1
    )  # each photo's evidence is its own brand's (see seed_shared_scan)


@pytest.fixture
def shared(web: TestClient, core: ServiceCore) -> SharedScan:
    web.headers["Authorization"] = f"Bearer {core.keys.create('admin', [], 'seeding')[1]}"
    try:
        return seed_shared_scan(web, core)
    finally:
        del web.headers["Authorization"]


def console_key(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


def test_each_brand_reviews_a_shared_scan_in_the_console(web: TestClient, core: ServiceCore, shared: SharedScan) -> None:
    scan_id = shared.scan["scan_id"]
    page = f"/console/scans/{scan_id}"
    assert sign_in(web, console_key(shared.nike)).status_code == 303
    form = {"csrf_token": page_csrf(web, page), "verdict": "confirmed_counterfeit", "note": NIKE_NOTE,
            "brand": "Nike", "product": "air-force-1"}  # fmt: skip
    assert web.post(f"{page}/feedback", data=form, follow_redirects=False).status_code == 303
    (nike_fb,) = core.feedback.for_scan(scan_id)
    assert nike_fb["brand"] == "Nike" and len(nike_fb["added_image_ids"]) == 1
    nike_page = web.get(page).text
    acme_photo = nike_page.split('id="photo-2-title"')[1].split("</article>")[0]
    assert NIKE_NOTE in nike_page and "1.000" not in acme_photo and "No reference image you may see" in acme_photo
    assert f"/console/scans/{scan_id}" in web.get("/console/review?reviewed=yes").text
    assert 'data-figure="reviewed">1<' in web.get("/console/dashboard").text
    web.post("/console/sign-out", data={"csrf_token": page_csrf(web)})

    assert sign_in(web, console_key(shared.acme)).status_code == 303
    acme_page = web.get(page)
    assert acme_page.status_code == 200
    assert NIKE_NOTE not in acme_page.text and nike_fb["added_image_ids"][0] not in acme_page.text
    assert f"/console/scans/{scan_id}" in web.get("/console/review?reviewed=no").text
    assert f"/console/scans/{scan_id}" not in web.get("/console/review?reviewed=yes").text
    assert 'data-figure="reviewed">0<' in web.get("/console/dashboard").text

    form = {"csrf_token": page_csrf(web, page), "verdict": "confirmed_counterfeit", "note": "acme saw it"}
    answer = web.post(f"{page}/feedback", data=form, headers={"HX-Request": "true"})
    assert answer.status_code == 201, answer.text
    assert "Nike" not in answer.text and "acme saw it" in answer.text and NIKE_NOTE not in answer.text
    assert [f["brand"] for f in core.feedback.for_scan(scan_id)] == ["Nike", "Acme"]
    assert f"/console/scans/{scan_id}" in web.get("/console/review?reviewed=yes").text
    assert 'data-figure="reviewed">1<' in web.get("/console/dashboard").text
