"""GET /v1/scans/{scan_id}: the stored, auditable record of a scan."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from tests import imaging
from tests.helpers import add_reference, scan

pytestmark = pytest.mark.both_databases  # the tests that use the database run on SQLite and PostgreSQL


def test_stored_record_equals_the_answer(client: TestClient) -> None:
    add_reference(client, imaging.jpeg(1), label="counterfeit")
    answer = scan(client, [imaging.jpeg(1), imaging.jpeg(2)], listing_id="L-1", brand="Acme")
    response = client.get(f"/v1/scans/{answer['scan_id']}")
    assert response.status_code == 200
    assert response.json() == answer


def test_each_scan_gets_its_own_record(client: TestClient) -> None:
    first = scan(client, [imaging.jpeg(1)])
    add_reference(client, imaging.jpeg(1))
    second = scan(client, [imaging.jpeg(1)])
    assert first["scan_id"] != second["scan_id"]
    # the record keeps the index version the scan was answered with
    assert client.get(f"/v1/scans/{first['scan_id']}").json()["index_version"].endswith("-r0")
    assert client.get(f"/v1/scans/{second['scan_id']}").json()["index_version"].endswith("-r1")


def test_unknown_scan_is_404(client: TestClient) -> None:
    response = client.get("/v1/scans/scan_does_not_exist")
    assert response.status_code == 404
    assert "scan_does_not_exist" in response.json()["detail"]


def test_records_survive_a_restart(make_client: Callable[..., TestClient], settings: Settings, data_dir: Path) -> None:
    first = make_client(settings)
    answer = scan(first, [imaging.jpeg(3)], listing_id="L-2")
    first.__exit__(None, None, None)
    second = make_client(settings)
    assert second.get(f"/v1/scans/{answer['scan_id']}").json() == answer
