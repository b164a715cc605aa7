"""PATCH /v1/catalog/images/{image_id}: relabel a reference image; the next scan sees the new label."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.core import ServiceCore
from service.scanning.photo_prep import PhotoInput
from tests import imaging
from tests.helpers import add_reference, scan

pytestmark = pytest.mark.both_databases  # the tests that use the database run on SQLite and PostgreSQL


def relabel(client: TestClient, image_id: str, label: str, token: str | None = None, expect: int = 200) -> dict[str, object]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = client.patch(f"/v1/catalog/images/{image_id}", json={"label": label}, headers=headers)
    assert response.status_code == expect, response.text
    body: dict[str, object] = response.json()
    return body


def test_relabel_takes_effect_for_the_next_scan_and_is_audited(client: TestClient) -> None:
    added = add_reference(client, imaging.jpeg(1), "Acme", "runner", "authentic")
    before = scan(client, [imaging.jpeg(1)])
    assert before["images"][0]["matches"][0]["label"] == "authentic"

    changed = relabel(client, added["image_id"], "counterfeit")
    assert (changed["image_id"], changed["label"], changed["sha256"]) == (added["image_id"], "counterfeit", added["sha256"])
    assert changed["index_version"] != added["index_version"]  # the catalog revision moved
    after = scan(client, [imaging.jpeg(1)])
    assert after["images"][0]["matches"][0]["label"] == "counterfeit"
    assert after["index_version"] == changed["index_version"]
    assert after["images"][0]["nearest_counterfeit"] is not None and after["images"][0]["nearest_authentic"] is None
    assert client.get(f"/v1/catalog/images/{added['image_id']}").json()["label"] == "counterfeit"
    products = client.get("/v1/catalog/products?brand=Acme").json()["products"]
    assert (products[0]["authentic"], products[0]["counterfeit"]) == (0, 1)

    same = relabel(client, added["image_id"], "counterfeit")  # no change: no new revision, no audit entry
    assert same["index_version"] == changed["index_version"]
    entries = client.get("/v1/audit?action=catalog.relabel").json()["entries"]
    assert len(entries) == 1
    assert (entries[0]["target"], entries[0]["brand"]) == (added["image_id"], "Acme")
    assert (entries[0]["details"]["from"], entries[0]["details"]["to"]) == ("authentic", "counterfeit")


def test_relabel_is_brand_scoped_and_checked(client: TestClient, core: ServiceCore) -> None:
    acme_image = add_reference(client, imaging.jpeg(1), "Acme", "runner", "authentic")
    globex_image = add_reference(client, imaging.jpeg(2), "Globex", "boot", "authentic")
    acme_key, acme = core.keys.create("brand", ["Acme"], "acme")
    _, scanner = core.keys.create("scanner", [], "pipeline")

    assert relabel(client, acme_image["image_id"], "counterfeit", acme)["label"] == "counterfeit"
    assert relabel(client, globex_image["image_id"], "counterfeit", acme, expect=404)["detail"].startswith("no reference")  # type: ignore[attr-defined]
    assert relabel(client, "ref_does_not_exist", "counterfeit", expect=404)
    assert relabel(client, acme_image["image_id"], "counterfeit", scanner, expect=403)
    assert relabel(client, acme_image["image_id"], "fake", expect=422)
    assert client.patch(f"/v1/catalog/images/{acme_image['image_id']}", json={}).status_code == 422
    assert client.get(f"/v1/catalog/images/{globex_image['image_id']}").json()["label"] == "authentic"
    entries = client.get(f"/v1/audit?action=catalog.relabel&actor={acme_key['key_id']}").json()["entries"]
    assert len(entries) == 1


def test_engine_relabel_reference_persists_across_a_restart(
    core: ServiceCore, make_core: Callable[[Settings], ServiceCore], settings: Settings, data_dir: Path
) -> None:
    ref = core.writer.add_reference(PhotoInput(imaging.jpeg(3)), "Acme", "runner", "counterfeit").ref
    updated = core.writer.relabel_reference(ref.image_id, "authentic", actor="console")
    assert updated is not None and updated.label == "authentic" and updated.image_id == ref.image_id
    assert core.writer.relabel_reference("ref_missing", "authentic") is None
    core.close()
    reopened = make_core(settings)
    assert reopened.catalog.get_image(ref.image_id).label == "authentic"  # type: ignore[union-attr]
    result = reopened.pipeline.scan([PhotoInput(imaging.jpeg(3))], record=False).model_dump()
    assert result["images"][0]["matches"][0]["label"] == "authentic"
