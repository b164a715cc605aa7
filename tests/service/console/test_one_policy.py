"""The API and the console ask one access policy: the same key gets the same answer on the same scan, image, brand and
import job, whichever way it asks (the console as an error page, the API as JSON)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.core import ServiceCore
from tests.archives import zip_bytes
from tests.service.console.helpers import TwoBrands, page_csrf, sign_in

pytestmark = pytest.mark.both_databases  # the tests that use the database run on SQLite and PostgreSQL

CONSOLE_KEYS = ("acme_key", "bolt_key", "admin_key")  # scanner keys get no console (checked below)


def api(client: TestClient, key: str, path: str) -> int:
    return client.get(path, headers={"Authorization": f"Bearer {key}"}).status_code


def console(client: TestClient, key: str, path: str) -> int:
    client.cookies.clear()
    assert sign_in(client, key).status_code == 303
    return client.get(path).status_code


@pytest.mark.parametrize("key_name", CONSOLE_KEYS)
def test_the_same_key_reads_the_same_scans_and_images_over_the_api_and_in_the_console(
    web: TestClient, brands: TwoBrands, key_name: str
) -> None:
    key = getattr(brands, key_name)
    answers: dict[str, tuple[int, int]] = {}
    for scan_id in (brands.acme_scan, brands.bolt_scan, "scan_doesnotexist"):
        answers[scan_id] = (api(web, key, f"/v1/scans/{scan_id}"), console(web, key, f"/console/scans/{scan_id}"))
    for image_id in (brands.acme_images[0], brands.bolt_images[0], "ref_doesnotexist"):
        answers[image_id] = (
            api(web, key, f"/v1/catalog/images/{image_id}/content"),
            console(web, key, f"/console/catalog/images/{image_id}/content"),
        )
    for brand in ("Acme", "Bolt"):  # (an admin's console shows an empty page for a brand with no images yet)
        answers[brand] = (
            api(web, key, f"/v1/catalog/export?brand={brand}"),
            console(web, key, f"/console/catalog?brand={brand}"),
        )
    for what, (over_api, in_console) in answers.items():
        assert over_api == in_console, f"{key_name} on {what}: API {over_api}, console {in_console}"
    mine = {"acme_key": "Acme", "bolt_key": "Bolt", "admin_key": None}[key_name]
    readable = {
        brands.acme_scan: mine in ("Acme", None),
        brands.bolt_scan: mine in ("Bolt", None),
        brands.acme_images[0]: mine in ("Acme", None),
        brands.bolt_images[0]: mine in ("Bolt", None),
        "Acme": mine in ("Acme", None),
        "Bolt": mine in ("Bolt", None),
    }
    assert {what: answer[0] for what, answer in answers.items()} == {
        what: 200 if readable.get(what, False) else 404 for what in answers
    }  # another brand's scan, image or brand: 404, exactly like one that does not exist


def test_a_scanner_key_may_read_its_scans_over_the_api_but_gets_no_console(
    web: TestClient, core: ServiceCore, brands: TwoBrands
) -> None:
    assert api(web, brands.scanner_key, f"/v1/scans/{brands.acme_scan}") == 404  # made by another key
    refused = sign_in(web, brands.scanner_key)
    assert refused.status_code == 403 and "scanner key cannot sign in" in refused.text
    over_api = web.get("/v1/catalog/brands", headers={"Authorization": f"Bearer {brands.scanner_key}"})
    assert over_api.status_code == 403 and over_api.json()["detail"] == "a scanner key may not do this (needs admin or brand)"


def test_an_import_job_is_seen_by_its_submitter_and_admins_over_the_api_and_in_the_console(
    web: TestClient, brands: TwoBrands
) -> None:
    assert sign_in(web, brands.acme_key).status_code == 303
    started = web.post(
        "/console/catalog/imports",
        data={"csrf_token": page_csrf(web)},
        files={"archive": ("empty.zip", zip_bytes([("notes.txt", b"x")]), "application/zip")},
        follow_redirects=False,
    )
    assert started.status_code == 303
    job_id = started.headers["location"].rsplit("/", 1)[1]
    for key, expected in ((brands.acme_key, 200), (brands.admin_key, 200), (brands.bolt_key, 404)):
        over_api = api(web, key, f"/v1/catalog/imports/{job_id}")
        in_console = console(web, key, f"/console/catalog/imports/{job_id}")
        assert over_api == in_console == expected


def test_a_brand_key_reviews_for_its_own_brands_only_over_the_api_and_in_the_console(web: TestClient, brands: TwoBrands) -> None:
    path = f"/v1/scans/{brands.acme_scan}/feedback"
    over_api = web.post(
        path, json={"verdict": "not_applicable", "brand": "Bolt"}, headers={"Authorization": f"Bearer {brands.acme_key}"}
    )
    assert sign_in(web, brands.acme_key).status_code == 303
    page = f"/console/scans/{brands.acme_scan}"
    form = {"csrf_token": page_csrf(web, page), "verdict": "not_applicable", "brand": "Bolt"}
    in_console = web.post(f"{page}/feedback", data=form, headers={"HX-Request": "true"})
    assert over_api.status_code == in_console.status_code == 403
    assert over_api.json()["detail"] in in_console.text.replace("&#39;", "'")
