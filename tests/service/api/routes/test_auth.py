"""API keys and roles: every endpoint but health checks needs a key; brand keys never see another brand's catalog."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from cli.main import cli
from service.access.api_keys import ApiKeyStore
from service.config import Settings
from service.core import ServiceCore
from tests import imaging
from tests.helpers import TINY_MODEL_FLAGS, add_reference, query_catalog, scan


def as_key(client: TestClient, core: ServiceCore, role: str, brands: tuple[str, ...] = ()) -> dict[str, str]:
    return {"Authorization": f"Bearer {core.keys.create(role, list(brands), role)[1]}"}


@pytest.fixture
def two_brands(client: TestClient) -> dict[str, dict[str, Any]]:
    return {
        "acme-a": add_reference(client, imaging.jpeg(1), brand="Acme", product="runner"),
        "acme-c": add_reference(client, imaging.jpeg(2), brand="Acme", product="runner", label="counterfeit"),
        "zeta-a": add_reference(client, imaging.jpeg(3), brand="Zeta", product="slide"),
        "zeta-c": add_reference(client, imaging.jpeg(4), brand="Zeta", product="slide", label="counterfeit"),
    }


PROTECTED = [
    ("POST", "/v1/scan"),
    ("GET", "/v1/scans/scan_x"),
    ("POST", "/v1/scans/scan_x/feedback"),
    ("POST", "/v1/catalog/images"),
    ("GET", "/v1/catalog/images"),
    ("GET", "/v1/catalog/images/ref_x"),
    ("GET", "/v1/catalog/images/ref_x/content"),
    ("DELETE", "/v1/catalog/images/ref_x"),
    ("GET", "/v1/catalog/brands"),
    ("GET", "/v1/catalog/products"),
    ("GET", "/v1/admin/model"),
    ("POST", "/v1/admin/model/activate"),
    ("POST", "/v1/admin/model/rollback"),
    ("GET", "/v1/audit"),
    ("GET", "/metrics"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_every_endpoint_needs_a_key(client: TestClient, method: str, path: str) -> None:
    for headers in (
        {"Authorization": ""},
        {"Authorization": "Bearer cs_key_0000_nope"},
        {"Authorization": "", "X-API-Key": "garbage"},
    ):
        response = client.request(method, path, headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert "API key" in response.json()["detail"]


def test_health_checks_need_no_key(client: TestClient) -> None:
    bare = {"Authorization": ""}
    assert client.get("/healthz", headers=bare).status_code == 200
    ready = client.get("/readyz", headers=bare)
    assert ready.status_code == 200 and ready.json()["auth"] == "api-keys"


@pytest.mark.both_databases
def test_x_api_key_header_and_revocation(client: TestClient, core: ServiceCore) -> None:
    record, token = core.keys.create("scanner", [], "pipeline")
    assert client.post("/v1/scan", headers={"Authorization": "", "X-API-Key": token},
                       files=[("images", ("a.jpg", imaging.jpeg(1), "image/jpeg"))]).status_code == 200  # fmt: skip
    core.keys.revoke(record["key_id"])
    headers = {"Authorization": f"Bearer {token}"}
    assert (
        client.post("/v1/scan", headers=headers, files=[("images", ("a.jpg", imaging.jpeg(1), "image/jpeg"))]).status_code == 401
    )


def test_scanner_scans_but_cannot_read_catalogs(client: TestClient, core: ServiceCore, two_brands: dict[str, Any]) -> None:
    scanner = as_key(client, core, "scanner")
    result = client.post("/v1/scan", headers=scanner, files=[("images", ("a.jpg", imaging.jpeg(3), "image/jpeg"))]).json()
    # Evidence from every brand, as ids only: the bytes are not reachable with this key.
    assert {m["brand"] for m in result["images"][0]["matches"]} == {"Acme", "Zeta"}
    image_id = result["images"][0]["matches"][0]["image_id"]
    assert client.get(f"/v1/catalog/images/{image_id}/content", headers=scanner).status_code == 403
    for path in ("/v1/catalog/brands", "/v1/catalog/images", "/v1/audit", "/v1/admin/model"):
        assert client.get(path, headers=scanner).status_code == 403
    assert client.get(f"/v1/scans/{result['scan_id']}", headers=scanner).status_code == 200  # its own scan
    other_scanner = as_key(client, core, "scanner")
    assert client.get(f"/v1/scans/{result['scan_id']}", headers=other_scanner).status_code == 404
    assert (
        client.post(f"/v1/scans/{result['scan_id']}/feedback", headers=scanner, json={"verdict": "not_applicable"}).status_code
        == 403
    )


@pytest.mark.both_databases
def test_brand_key_sees_and_changes_only_its_brand(client: TestClient, core: ServiceCore, two_brands: dict[str, Any]) -> None:
    acme = as_key(client, core, "brand", ("Acme",))
    assert client.get("/v1/catalog/brands", headers=acme).json()["brands"] == [{"name": "Acme", "products": 1, "images": 2}]
    assert {p["brand"] for p in client.get("/v1/catalog/products", headers=acme).json()["products"]} == {"Acme"}
    assert client.get("/v1/catalog/products?brand=Zeta", headers=acme).json()["products"] == []
    listed = client.get("/v1/catalog/images", headers=acme).json()
    assert listed["total"] == 2 and {i["brand"] for i in listed["images"]} == {"Acme"}
    assert client.get("/v1/catalog/images?brand=Zeta", headers=acme).json()["total"] == 0
    zeta_id = two_brands["zeta-a"]["image_id"]
    for method, path in (("GET", f"/v1/catalog/images/{zeta_id}"), ("GET", f"/v1/catalog/images/{zeta_id}/content"),
                         ("DELETE", f"/v1/catalog/images/{zeta_id}")):  # fmt: skip
        response = client.request(method, path, headers=acme)
        assert response.status_code == 404  # indistinguishable from an id that does not exist
        assert client.request(method, "/v1/catalog/images/ref_doesnotexist", headers=acme).json() == {
            "detail": "no reference image 'ref_doesnotexist'"
        }
    assert client.get(f"/v1/catalog/images/{zeta_id}").status_code == 200  # still there (admin view)
    upload = client.post("/v1/catalog/images", headers=acme, files={"file": ("z.jpg", imaging.jpeg(9), "image/jpeg")},
                         data={"brand": "Zeta", "product": "slide", "label": "authentic"})  # fmt: skip
    assert upload.status_code == 403
    mine = client.post("/v1/catalog/images", headers=acme, files={"file": ("a.jpg", imaging.jpeg(9), "image/jpeg")},
                       data={"brand": "Acme", "product": "runner", "label": "authentic"})  # fmt: skip
    assert mine.status_code == 201
    assert client.delete(f"/v1/catalog/images/{mine.json()['image_id']}", headers=acme).status_code == 200


def test_brand_scans_are_scoped_and_evidence_is_redacted(
    client: TestClient, core: ServiceCore, two_brands: dict[str, Any]
) -> None:
    acme = as_key(client, core, "brand", ("Acme",))
    own = client.post("/v1/scan", headers=acme, files=[("images", ("q.jpg", imaging.jpeg(3), "image/jpeg"))]).json()
    assert own["brand"] == "Acme" and {m["brand"] for m in own["images"][0]["matches"]} == {"Acme"}
    forbidden = client.post("/v1/scan", headers=acme, data={"brand": "Zeta"},
                            files=[("images", ("q.jpg", imaging.jpeg(3), "image/jpeg"))])  # fmt: skip
    assert forbidden.status_code == 403

    # A scanner's scan whose top evidence is Zeta's photo: Acme may read it (it concerns Acme too) but sees Acme only.
    scanner = as_key(client, core, "scanner")
    both = client.post("/v1/scan", headers=scanner, files=[("images", ("q.jpg", imaging.jpeg(4), "image/jpeg"))]).json()
    zeta_ids = {two_brands["zeta-a"]["image_id"], two_brands["zeta-c"]["image_id"]}
    assert zeta_ids & {m["image_id"] for m in both["images"][0]["matches"]}
    seen = client.get(f"/v1/scans/{both['scan_id']}", headers=acme)
    if seen.status_code == 200:
        body = seen.json()
        assert all(m["brand"] == "Acme" for m in body["images"][0]["matches"])
        assert not any(r.get("image_id") in zeta_ids for r in body["reasons"])
        assert not any(d["brand"] == "Zeta" for d in body["images"][0]["near_duplicates"])
    else:
        assert seen.status_code == 404
    nike = as_key(client, core, "brand", ("Nike",))
    assert client.get(f"/v1/scans/{both['scan_id']}", headers=nike).status_code == 404  # concerns neither brand


@pytest.mark.both_databases
def test_brand_feedback_stays_in_its_brand(client: TestClient, core: ServiceCore, two_brands: dict[str, Any]) -> None:
    acme = as_key(client, core, "brand", ("Acme",))
    flagged = scan(client, [imaging.jpeg(11)], brand="Zeta", product="slide")
    assert client.post(f"/v1/scans/{flagged['scan_id']}/feedback", headers=acme,
                       json={"verdict": "not_applicable"}).status_code == 404  # fmt: skip
    own = client.post("/v1/scan", headers=acme, files=[("images", ("q.jpg", imaging.jpeg(12), "image/jpeg"))]).json()
    if own["photos_kept"]:
        sneaky = client.post(f"/v1/scans/{own['scan_id']}/feedback", headers=acme,
                             json={"verdict": "confirmed_counterfeit", "brand": "Zeta", "product": "slide"})  # fmt: skip
        assert sneaky.status_code == 403
    fb = client.post(f"/v1/scans/{own['scan_id']}/feedback", headers=acme, json={"verdict": "confirmed_authentic"})
    assert fb.status_code == 201


def test_non_admins_cannot_roll_models_or_read_the_audit(client: TestClient, core: ServiceCore) -> None:
    acme = as_key(client, core, "brand", ("Acme",))
    for method, path in (("GET", "/v1/admin/model"), ("POST", "/v1/admin/model/rollback"), ("GET", "/v1/audit")):
        assert client.request(method, path, headers=acme).status_code == 403


@pytest.mark.both_databases
def test_audit_log_records_who_did_what(client: TestClient, core: ServiceCore) -> None:
    record, token = core.keys.create("brand", ["Acme"], "acme team")
    acme = {"Authorization": f"Bearer {token}"}
    added = client.post("/v1/catalog/images", headers=acme, files={"file": ("a.jpg", imaging.jpeg(21), "image/jpeg")},
                        data={"brand": "Acme", "product": "runner", "label": "authentic"}).json()  # fmt: skip
    client.delete(f"/v1/catalog/images/{added['image_id']}", headers=acme)
    entries = client.get("/v1/audit", params={"actor": record["key_id"]}).json()["entries"]
    assert [(e["action"], e["target"], e["brand"]) for e in entries] == [
        ("catalog.delete", added["image_id"], "Acme"),
        ("catalog.add", added["image_id"], "Acme"),
    ]
    assert entries[1]["details"]["sha256"] == added["sha256"]
    assert (
        client.get("/v1/audit", params={"action": "catalog.delete", "limit": 1}).json()["entries"][0]["target"]
        == added["image_id"]
    )
    assert client.get("/v1/audit", params={"limit": 0}).status_code == 422


def test_auth_can_be_disabled_for_demos(make_client: Any, data_dir: Any, caplog: pytest.LogCaptureFixture) -> None:
    from tests.helpers import tiny_settings

    with caplog.at_level("WARNING"):
        client = make_client(tiny_settings(data_dir, auth_disabled=True))
    bare = {"Authorization": ""}
    assert client.get("/v1/catalog/brands", headers=bare).status_code == 200
    assert client.get("/readyz", headers=bare).json()["auth"] == "disabled"
    assert "AUTHENTICATION IS DISABLED" in caplog.text
    big = b" " * (65 * 1024)  # with no key to check, the body bounds still hold
    response = client.post("/v1/scans/scan_x/feedback", content=big, headers={**bare, "content-type": "application/json"})
    assert response.status_code == 413 and "larger than 65536 bytes" in response.json()["detail"]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_every_endpoint_checks_the_key_before_reading_the_body(client: TestClient, method: str, path: str) -> None:
    read = 0

    def body() -> Iterator[bytes]:
        nonlocal read
        for _ in range(100):
            read += 1
            yield b"\0" * (1024 * 1024)

    headers = {"Authorization": "", "content-type": "application/json", "content-length": str(100 * 1024 * 1024)}
    response = client.request(method, path, content=body(), headers=headers)
    assert response.status_code == 401, response.text
    assert response.json()["detail"] == "an API key is required: send 'Authorization: Bearer <key>'"
    assert read == 0


@pytest.mark.both_databases
def test_keys_cli(settings: Settings) -> None:
    def run(*args: str) -> Any:
        url = ["--database-url", settings.storage.database_url] if settings.storage.database_url else []
        result = CliRunner().invoke(cli, [*args, *TINY_MODEL_FLAGS, "--data-dir", str(settings.storage.data_dir), *url])
        return result

    created = run("keys", "create", "--role", "brand", "--brand", "Acme", "--name", "acme")
    assert created.exit_code == 0, created.output
    import json

    body = json.loads(created.stdout)
    assert body["key"].startswith("cs_key_") and body["brands"] == ["Acme"]
    listed = json.loads(run("keys", "list").stdout)["keys"]
    assert [k["key_id"] for k in listed] == [body["key_id"]] and "key" not in listed[0]
    secret = body["key"].split("_", 3)[-1]
    assert secret not in str(query_catalog(settings, "SELECT * FROM api_keys"))  # only its digest is stored
    if settings.storage.database_url is None:  # nor anywhere else in the file
        assert secret not in (settings.storage.data_dir / "catalog.sqlite3").read_bytes().decode("latin-1")
    assert run("keys", "create", "--role", "brand").exit_code != 0  # a brand key needs brands
    assert run("keys", "create", "--role", "scanner", "--brand", "Acme").exit_code != 0
    revoked = json.loads(run("keys", "revoke", body["key_id"]).stdout)
    assert revoked["revoked_at"] is not None
    assert run("keys", "revoke", "key_nope").exit_code != 0


@pytest.mark.both_databases
def test_key_cache_ends_with_revocation(settings: Settings, core: ServiceCore) -> None:
    """A key checked once is trusted for `api_key_cache_s`: revoked here it stops at once, revoked by another process
    (another store on the same database) within the cache time; unknown tokens are never cached."""
    store = ApiKeyStore(core.database, cache_s=0.3)
    other_process = ApiKeyStore(core.database)
    first, token = store.create("scanner", [], "pipeline")
    second, token2 = store.create("scanner", [], "pipeline 2")
    assert store.authenticate(token) is not None and store.authenticate(token2) is not None
    store.revoke(first["key_id"])
    assert store.authenticate(token) is None  # this process: at once
    other_process.revoke(second["key_id"])
    assert store.authenticate(token2) is not None  # still cached
    time.sleep(0.35)
    assert store.authenticate(token2) is None
    assert store.authenticate(token + "x") is None and store.authenticate("cs_key_00_nope") is None
