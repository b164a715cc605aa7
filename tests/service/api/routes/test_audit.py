"""GET /v1/audit?since=&until= compares instants: a time with a UTC offset means that instant, one without is UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient

from tests import imaging
from tests.helpers import add_reference

pytestmark = pytest.mark.both_databases  # the tests that use the database run on SQLite and PostgreSQL

PLUS_5 = timezone(timedelta(hours=5))
MINUS_7 = timezone(timedelta(hours=-7))


@pytest.fixture
def entry(client: TestClient) -> dict[str, object]:
    image = add_reference(client, imaging.jpeg(3))
    (found,) = client.get("/v1/audit", params={"action": "catalog.add"}).json()["entries"]
    assert found["target"] == image["image_id"]
    return dict(found)


def _targets(client: TestClient, **params: str) -> list[object]:
    response = client.get("/v1/audit", params={"action": "catalog.add", **params})
    assert response.status_code == 200, response.text
    return [e["target"] for e in response.json()["entries"]]


def test_since_and_until_with_an_offset_are_the_instant_they_name(client: TestClient, entry: dict[str, object]) -> None:
    at = datetime.fromisoformat(str(entry["at"]))
    assert at.utcoffset() == timedelta(0)
    before, after = at - timedelta(seconds=1), at + timedelta(seconds=1)
    hit = [entry["target"]]
    # the same instants, written with +05:00, -07:00 and Z
    assert _targets(client, since=before.astimezone(PLUS_5).isoformat()) == hit
    assert _targets(client, since=after.astimezone(PLUS_5).isoformat()) == []
    assert _targets(client, until=after.astimezone(MINUS_7).isoformat()) == hit
    assert _targets(client, until=before.astimezone(MINUS_7).isoformat()) == []
    zulu = before.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert _targets(client, since=zulu, until=after.astimezone(PLUS_5).isoformat()) == hit
    assert _targets(client, since=before.astimezone(MINUS_7).isoformat(), until=before.astimezone(PLUS_5).isoformat()) == []


def test_a_time_without_an_offset_is_utc(client: TestClient, entry: dict[str, object]) -> None:
    at = datetime.fromisoformat(str(entry["at"])).astimezone(UTC).replace(tzinfo=None)
    hit = [entry["target"]]
    assert _targets(client, since=(at - timedelta(seconds=1)).isoformat()) == hit
    assert _targets(client, since=(at + timedelta(seconds=1)).isoformat()) == []
    assert _targets(client, until=(at + timedelta(seconds=1)).isoformat()) == hit
    assert _targets(client, until=(at - timedelta(seconds=1)).isoformat()) == []


def test_a_malformed_time_is_422(client: TestClient) -> None:
    assert client.get("/v1/audit", params={"since": "yesterday"}).status_code == 422
