"""The console over plain HTTP (TestClient): sign-in and its cookie, CSRF, revocation, roles and brand scoping."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import httpx2
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import sessionmaker

from service.app import create_app
from service.config import Settings
from service.console.queries import catalog_images
from service.console.sessions import ConsoleSession, SessionStore, digest
from service.console.thumbnails import THUMBNAIL_SIZES, Thumbnails
from service.core import ServiceCore
from service.scanning.photo_prep import PhotoInput
from tests import imaging
from tests.archives import zip_bytes
from tests.helpers import query_catalog, tiny_settings
from tests.service.console.helpers import TwoBrands, hidden_csrf, page_csrf, sign_in


def cookie_header(response: httpx2.Response, name: str) -> str:
    headers = [v for k, v in response.headers.multi_items() if k == "set-cookie" and v.startswith(f"{name}=")]
    assert headers, f"no Set-Cookie for {name}"
    return str(headers[0])


def test_pages_need_a_session(web: TestClient) -> None:
    response = web.get("/console/review?verdict=needs_review", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/console/sign-in?next=%2Fconsole%2Freview%3Fverdict%3Dneeds_review"
    htmx = web.get("/console/review", headers={"HX-Request": "true"}, follow_redirects=False)
    assert htmx.status_code == 401 and htmx.headers["hx-redirect"] == "/console/sign-in"
    assert web.post("/console/sign-out", follow_redirects=False).status_code == 401
    assert web.get("/console", follow_redirects=False).headers["location"] == "/console/review"


@pytest.mark.both_databases
def test_sign_in_sets_a_hardened_session_cookie(
    web: TestClient, core: ServiceCore, brands: TwoBrands, settings: Settings
) -> None:
    page = web.get("/console/sign-in")
    assert page.status_code == 200 and 'type="password"' in page.text and '<label for="api-key">' in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"] and page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"
    response = sign_in(web, brands.acme_key, "/console/dashboard")
    assert response.status_code == 303 and response.headers["location"] == "/console/dashboard"
    cookie = cookie_header(response, "cs_console").lower()
    for flag in ("httponly", "secure", "samesite=strict", "path=/console", "max-age=28800"):
        assert flag in cookie, cookie
    token = web.cookies.get("cs_console")
    assert token and len(token) >= 40
    rows = query_catalog(settings, "SELECT token_sha256, key_id FROM console_sessions")  # only the digest is stored
    assert [r[0] for r in rows] == [digest(token)] and token not in str(rows)
    home = web.get("/console/review")
    assert home.status_code == 200 and "acme team" in home.text and "Sign out" in home.text


def test_cookie_secure_flag_follows_the_setting(make_core: Callable[[Settings], ServiceCore], tmp_path: Path) -> None:
    settings = tiny_settings(tmp_path / "data", console_cookie_secure=False)
    core = make_core(settings)
    key = core.keys.create("admin", [], "dev")[1]
    with TestClient(create_app(settings, core=core)) as client:  # plain http://testserver
        response = sign_in(client, key)
        assert response.status_code == 303
        assert "secure" not in cookie_header(response, "cs_console").lower()
        assert client.get("/console/review").status_code == 200


def test_wrong_and_scanner_keys_cannot_sign_in(web: TestClient, brands: TwoBrands) -> None:
    wrong = sign_in(web, brands.acme_key[:-4] + "abcd")
    assert wrong.status_code == 401 and "unknown or has been revoked" in wrong.text and "cs_console=" not in str(wrong.headers)
    scanner = sign_in(web, brands.scanner_key)
    assert scanner.status_code == 403 and "scanner key cannot sign in" in scanner.text
    assert web.get("/console/review", follow_redirects=False).status_code == 303


def test_sign_in_form_needs_its_own_token(web: TestClient, brands: TwoBrands) -> None:
    web.get("/console/sign-in")
    forged = web.post("/console/sign-in", data={"api_key": brands.acme_key, "csrf_token": "guess"}, follow_redirects=False)
    assert forged.status_code == 403 and "expired" in forged.text
    token = hidden_csrf(web.get("/console/sign-in").text)
    other_site = web.post(
        "/console/sign-in",
        data={"api_key": brands.acme_key, "csrf_token": token},
        headers={"Origin": "https://evil.example"},
        follow_redirects=False,
    )
    assert other_site.status_code == 403


def test_next_cannot_leave_the_console(web: TestClient, brands: TwoBrands) -> None:
    for target in ("https://evil.example/", "//evil.example/console/x", "/v1/audit", "/console\\@evil"):
        assert sign_in(web, brands.acme_key, target).headers["location"] == "/console/review"
        web.cookies.clear()


def test_posts_without_the_csrf_token_are_refused(web: TestClient, core: ServiceCore, brands: TwoBrands) -> None:
    sign_in(web, brands.acme_key)
    image_id = brands.acme_images[0]
    assert web.post(f"/console/catalog/images/{image_id}/delete").status_code == 403
    wrong = web.post(f"/console/catalog/images/{image_id}/delete", data={"csrf_token": "0" * 64})
    assert wrong.status_code == 403 and "CSRF" in wrong.text
    header = web.post(f"/console/scans/{brands.acme_scan}/feedback", data={"verdict": "not_applicable"},
                      headers={"X-CSRF-Token": "nope", "HX-Request": "true"})  # fmt: skip
    assert header.status_code == 403
    token = page_csrf(web)
    other_site = web.post(f"/console/catalog/images/{image_id}/delete", data={"csrf_token": token},
                          headers={"Origin": "https://evil.example"})  # fmt: skip
    assert other_site.status_code == 403
    assert core.catalog.get_image(image_id) is not None and core.feedback.for_scan(brands.acme_scan) == []
    ok = web.post(f"/console/catalog/images/{image_id}/delete", headers={"X-CSRF-Token": token, "HX-Request": "true"})
    assert ok.status_code == 200 and "Deleted" in ok.text and core.catalog.get_image(image_id) is None


@pytest.mark.both_databases
def test_sign_out_and_revocation_end_sessions(web: TestClient, core: ServiceCore, brands: TwoBrands) -> None:
    sign_in(web, brands.acme_key)
    token = page_csrf(web)
    out = web.post("/console/sign-out", data={"csrf_token": token}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/console/sign-in?signed_out=1"
    assert "max-age=0" in cookie_header(out, "cs_console").lower()
    assert web.get("/console/sign-in?signed_out=1").text.count("You are signed out") == 1
    web.cookies.clear()

    sign_in(web, brands.acme_key)
    assert web.get("/console/review").status_code == 200
    acme_key_id = next(k["key_id"] for k in core.keys.list() if k["name"] == "acme team")
    core.keys.revoke(acme_key_id)
    assert web.get("/console/review", follow_redirects=False).status_code == 303  # at once, at the next request
    assert SessionStore(core.database, 60).count_for_key(acme_key_id) == 0


@pytest.mark.both_databases
def test_sessions_expire(core: ServiceCore, brands: TwoBrands) -> None:
    store = SessionStore(core.database, 3600)
    key_id = next(k["key_id"] for k in core.keys.list() if k["name"] == "bolt team")
    token = store.create(key_id)
    signed_in = store.resolve(token)
    assert signed_in is not None and signed_in.principal.brands == frozenset({"Bolt"})
    assert store.resolve(token + "x") is None and store.resolve("") is None
    with sessionmaker(core.database).begin() as session:
        session.execute(update(ConsoleSession).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    assert store.resolve(token) is None and store.count_for_key(key_id) == 0


@pytest.mark.both_databases
def test_a_brand_user_sees_only_its_brand(web: TestClient, core: ServiceCore, brands: TwoBrands) -> None:
    sign_in(web, brands.acme_key)
    queue = web.get("/console/review").text
    assert brands.acme_scan in queue and brands.bolt_scan not in queue and "Bolt" not in queue
    catalog = web.get("/console/catalog?brand=Acme").text
    assert all(i in catalog for i in brands.acme_images) and not any(i in catalog for i in brands.bolt_images)
    assert "Bolt" not in catalog
    assert web.get("/console/catalog", follow_redirects=False).headers["location"] == "/console/catalog?brand=Acme"
    for path in (
        "/console/catalog?brand=Bolt",
        f"/console/scans/{brands.bolt_scan}",
        f"/console/scans/{brands.bolt_scan}/photos/1",
        f"/console/catalog/images/{brands.bolt_images[0]}/thumbnail",
        f"/console/catalog/images/{brands.bolt_images[0]}/content",
        "/console/scans/scan_doesnotexist",
        "/console/catalog/images/ref_doesnotexist/thumbnail",
    ):
        assert web.get(path).status_code == 404, path
    token = page_csrf(web)
    for path, data in (
        (f"/console/catalog/images/{brands.bolt_images[0]}/delete", {}),
        (f"/console/catalog/images/{brands.bolt_images[0]}/label", {"label": "authentic"}),
        (f"/console/scans/{brands.bolt_scan}/feedback", {"verdict": "confirmed_authentic"}),
    ):
        assert web.post(path, data={"csrf_token": token, **data}).status_code == 404, path
    assert core.catalog.get_image(brands.bolt_images[0]) is not None and core.feedback.for_scan(brands.bolt_scan) == []
    dashboard = web.get("/console/dashboard").text
    assert 'data-figure="scans">1<' in dashboard and "Bolt" not in dashboard
    assert 'data-figure="scans">1<' in web.get("/console/dashboard?brand=Bolt").text  # not theirs: their own figures
    assert web.get(f"/console/scans/{brands.acme_scan}").status_code == 200
    assert web.get(f"/console/catalog/images/{brands.acme_images[0]}/thumbnail").headers["content-type"] == "image/jpeg"


def test_admin_sees_every_brand(web: TestClient, brands: TwoBrands) -> None:
    sign_in(web, brands.admin_key)
    queue = web.get("/console/review").text
    assert brands.acme_scan in queue and brands.bolt_scan in queue
    assert brands.bolt_scan not in web.get("/console/review?brand=Acme").text
    assert web.get(f"/console/scans/{brands.bolt_scan}").status_code == 200
    assert 'data-figure="scans">2<' in web.get("/console/dashboard").text
    assert 'data-figure="scans">1<' in web.get("/console/dashboard?brand=Bolt&days=7").text
    assert 'data-figure="scans">2<' in web.get("/console/dashboard?brand=Nobody").text  # unknown: all brands


@pytest.mark.both_databases
def test_upload_relabel_and_feedback(web: TestClient, core: ServiceCore, brands: TwoBrands) -> None:
    sign_in(web, brands.acme_key)
    token = page_csrf(web)
    htmx = {"X-CSRF-Token": token, "HX-Request": "true"}
    form = {"brand": "Acme", "product": "runner", "label": "authentic", "source": "shoot"}
    files = [("files", ("a.jpg", imaging.jpeg(50), "image/jpeg")), ("files", ("b.png", imaging.png(51), "image/png"))]
    added = web.post("/console/catalog/images", data=form, files=files, headers=htmx)
    assert added.status_code == 200 and added.text.count("added as") == 2
    bad = web.post("/console/catalog/images", data=form, files=[("files", ("notes.txt", b"hello", "text/plain"))], headers=htmx)
    assert bad.status_code == 415 and "notes.txt" in bad.text and "unsupported content type" in bad.text
    corrupt = web.post("/console/catalog/images", data=form, files=[("files", ("x.jpg", b"not an image", "image/jpeg"))],
                       headers=htmx)  # fmt: skip
    assert corrupt.status_code == 400 and "not a decodable image" in corrupt.text
    other = web.post("/console/catalog/images", data={**form, "brand": "Bolt"}, files=files[:1], headers=htmx)
    assert other.status_code == 403 and "may not add" in other.text
    missing = web.post("/console/catalog/images", data={**form, "product": ""}, files=files[:1], headers=htmx)
    assert missing.status_code == 422

    image_id = brands.acme_images[1]  # authentic
    relabelled = web.post(f"/console/catalog/images/{image_id}/label", data={"label": "counterfeit"}, headers=htmx)
    assert relabelled.status_code == 200 and 'data-label="counterfeit"' in relabelled.text
    ref = core.catalog.get_image(image_id)
    assert ref is not None and ref.label == "counterfeit"

    before = len(core.catalog.all_images())
    feedback = web.post(f"/console/scans/{brands.acme_scan}/feedback", data={"verdict": "confirmed_counterfeit", "note": "logo"},
                        headers=htmx)  # fmt: skip
    assert feedback.status_code == 201 and "Recorded: confirmed counterfeit" in feedback.text, feedback.text
    (recorded,) = core.feedback.for_scan(brands.acme_scan)
    assert recorded["verdict"] == "confirmed_counterfeit" and recorded["note"] == "logo"
    # the scan's photo is a copy of an Acme known fake already in the catalog: that image, nothing new
    assert recorded["added_image_ids"] == [brands.acme_images[0]] and len(core.catalog.all_images()) == before
    page = web.get(f"/console/scans/{brands.acme_scan}").text
    assert 'data-verdict="confirmed_counterfeit"' in page
    invalid = web.post(f"/console/scans/{brands.acme_scan}/feedback", data={"verdict": "maybe"}, headers=htmx)
    assert invalid.status_code == 422


def test_feedback_on_a_new_photo_adds_it_to_the_catalog(web: TestClient, core: ServiceCore, brands: TwoBrands) -> None:
    result = core.pipeline.scan([PhotoInput(imaging.jpeg(77))], brand="Acme", product="runner", actor="tests").model_dump()
    if result["verdict"] not in ("likely_counterfeit", "needs_review"):
        pytest.skip(f"random weights answered {result['verdict']}")
    sign_in(web, brands.acme_key)
    token = page_csrf(web)
    scan_id = result["scan_id"]
    form = {"verdict": "confirmed_counterfeit", "csrf_token": token}
    response = web.post(f"/console/scans/{scan_id}/feedback", data=form, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == f"/console/scans/{scan_id}"
    (recorded,) = core.feedback.for_scan(scan_id)
    (new_id,) = recorded["added_image_ids"]
    ref = core.catalog.get_image(new_id)
    assert ref is not None and (ref.brand, ref.product, ref.label) == ("Acme", "runner", "counterfeit")
    assert ref.source == f"scan:{scan_id}"
    assert new_id in web.get("/console/catalog?brand=Acme&product=runner&label=counterfeit").text


def test_auth_disabled_signs_in_as_local_admin(make_core: Callable[[Settings], ServiceCore], tmp_path: Path) -> None:
    settings = tiny_settings(tmp_path / "data", auth_disabled=True)
    with TestClient(create_app(settings, core=make_core(settings)), base_url="https://testserver") as client:
        page = client.get("/console/sign-in")
        assert "Authentication is disabled" in page.text and 'name="api_key"' not in page.text
        response = sign_in(client, "")
        assert response.status_code == 303
        assert "local admin" in client.get("/console/review").text


def test_console_can_be_turned_off(make_core: Callable[[Settings], ServiceCore], tmp_path: Path) -> None:
    settings = tiny_settings(tmp_path / "data", console_enabled=False)
    with TestClient(create_app(settings, core=make_core(settings))) as client:
        assert client.get("/console/sign-in").status_code == 404
        assert client.get("/console/static/htmx.min.js").status_code == 404


def test_static_files_and_htmx_licence(web: TestClient) -> None:
    script = web.get("/console/static/htmx.min.js")
    assert script.status_code == 200 and script.text.startswith("/*! htmx 2.")
    assert "Zero-Clause BSD" in script.text.splitlines()[0]
    assert "Zero-Clause BSD" in web.get("/console/static/htmx.LICENSE").text
    assert web.get("/console/static/console.css").status_code == 200


@pytest.mark.both_databases
def test_catalog_pages_are_scoped_and_paged_in_sql(core: ServiceCore, brands: TwoBrands) -> None:
    acme = frozenset({"Acme"})
    first, total = catalog_images(core, acme, "Acme", None, None, limit=3, offset=0)
    rest, _ = catalog_images(core, acme, "Acme", None, None, limit=3, offset=3)
    assert total == 4 and len(first) == 3 and len(rest) == 1
    assert {r.image_id for r in first + rest} == set(brands.acme_images)
    assert [r.created_at for r in first] == sorted((r.created_at for r in first), reverse=True)
    assert catalog_images(core, acme, "Bolt", None, None) == ([], 0)  # another brand: nothing, whatever is asked
    fakes, n = catalog_images(core, None, "Bolt", "boot", "counterfeit")
    assert n == 2 and {r.label for r in fakes} == {"counterfeit"} and {r.brand for r in fakes} == {"Bolt"}
    ref = core.catalog.get_image(first[0].image_id)
    assert ref == first[0]


@pytest.mark.both_databases
def test_import_job_pages(web: TestClient, brands: TwoBrands) -> None:
    sign_in(web, brands.acme_key)
    token = page_csrf(web)
    refused = web.post("/console/catalog/imports", data={"csrf_token": token},
                       files={"archive": ("photos.zip", b"this is not a zip", "application/zip")})  # fmt: skip
    assert refused.status_code == 415 and "photos.zip" in refused.text
    started = web.post("/console/catalog/imports", data={"csrf_token": token},
                       files={"archive": ("empty.zip", zip_bytes([("notes.txt", b"x")]), "application/zip")},
                       follow_redirects=False)  # fmt: skip
    assert started.status_code == 303 and started.headers["location"].startswith("/console/catalog/imports/imp_")
    page = web.get(started.headers["location"])
    assert page.status_code == 200 and "empty.zip" in page.text
    assert web.get("/console/catalog/imports/imp_doesnotexist").status_code == 404


def test_deleting_an_image_deletes_its_thumbnails(web: TestClient, core: ServiceCore, brands: TwoBrands, data_dir: Path) -> None:
    sign_in(web, brands.acme_key)
    image_id = brands.acme_images[2]
    for size in ("small", "large"):
        shown = web.get(f"/console/catalog/images/{image_id}/thumbnail", params={"size": size})
        assert shown.status_code == 200 and shown.headers["content-type"] == "image/jpeg"
    ref = core.catalog.get_image(image_id)
    assert ref is not None
    cached = sorted(path for path in (data_dir / "console_thumbnails").rglob(ref.sha256))
    assert len(cached) == 2

    token = page_csrf(web)
    deleted = web.post(f"/console/catalog/images/{image_id}/delete", headers={"X-CSRF-Token": token, "HX-Request": "true"})
    assert deleted.status_code == 200, deleted.text
    assert not any(path.exists() for path in cached)
    assert web.get(f"/console/catalog/images/{image_id}/thumbnail").status_code == 404
    # still shown for the images that remain
    assert web.get(f"/console/catalog/images/{brands.acme_images[0]}/thumbnail").status_code == 200


def test_an_api_delete_removes_thumbnails_before_the_console_is_opened(
    settings: Settings, core: ServiceCore, brands: TwoBrands, data_dir: Path
) -> None:
    ref = core.catalog.get_image(brands.acme_images[3])
    assert ref is not None
    made_earlier = Thumbnails(data_dir / "console_thumbnails", settings.image_limits())  # e.g. by the last process
    made_earlier.get(ref.sha256, THUMBNAIL_SIZES["small"], partial(core.blobs.get, ref.sha256))
    cached = list((data_dir / "console_thumbnails").rglob(ref.sha256))
    assert len(cached) == 1

    with TestClient(create_app(settings, core=core)) as api:  # no console page is requested
        deleted = api.delete(f"/v1/catalog/images/{ref.image_id}", headers={"authorization": f"Bearer {brands.acme_key}"})
        assert deleted.status_code == 200, deleted.text
    assert not cached[0].exists()
