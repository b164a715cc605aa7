"""GET /v1/catalog/images pages in SQL: filters, the brand key's scope, the count and the page are all the database's,
through the one query the console's catalog page uses too, so a large catalog costs one page's rows."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from service.console.queries import catalog_images
from service.core import ServiceCore
from tests import imaging
from tests.helpers import add_reference

pytestmark = pytest.mark.both_databases  # the tests that use the database run on SQLite and PostgreSQL

CATALOG = [  # (seed, brand, product, label), in the order they are added
    (1, "Acme", "runner", "authentic"),
    (2, "Acme", "runner", "counterfeit"),
    (3, "Zeta", "slide", "authentic"),
    (4, "Acme", "court", "counterfeit"),
    (5, "Acme", "runner", "authentic"),
]


@pytest.fixture
def added(client: TestClient) -> list[dict[str, Any]]:
    return [add_reference(client, imaging.jpeg(seed), brand=b, product=p, label=label) for seed, b, p, label in CATALOG]


def ids(page: dict[str, Any]) -> list[str]:
    return [image["image_id"] for image in page["images"]]


@contextmanager
def statements(core: ServiceCore) -> Iterator[list[str]]:
    """The SQL the catalog database runs meanwhile."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(" ".join(statement.split()))

    event.listen(core.database, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(core.database, "before_cursor_execute", record)


def test_pages_follow_the_order_images_were_added(client: TestClient, added: list[dict[str, Any]]) -> None:
    everything = [image["image_id"] for image in added]
    pages = [client.get("/v1/catalog/images", params={"limit": 2, "offset": offset}).json() for offset in (0, 2, 4)]
    assert [page["total"] for page in pages] == [5, 5, 5]
    assert [i for page in pages for i in ids(page)] == everything
    assert {k: pages[0]["images"][0][k] for k in ("brand", "product", "label", "sha256")} == {
        k: added[0][k] for k in ("brand", "product", "label", "sha256")
    }
    past = client.get("/v1/catalog/images", params={"offset": 10**30}).json()  # past any catalog: an empty page
    assert past == {"images": [], "total": 5}


def test_filters_and_a_brand_keys_scope_are_applied_before_paging(
    client: TestClient, core: ServiceCore, added: list[dict[str, Any]]
) -> None:
    runner = client.get("/v1/catalog/images", params={"brand": "Acme", "product": "runner", "limit": 1, "offset": 1}).json()
    assert runner["total"] == 3 and ids(runner) == [added[1]["image_id"]]
    fakes = client.get("/v1/catalog/images", params={"label": "counterfeit"}).json()
    assert fakes["total"] == 2 and ids(fakes) == [added[1]["image_id"], added[3]["image_id"]]

    acme = {"Authorization": f"Bearer {core.keys.create('brand', ['Acme'], 'acme')[1]}"}
    mine = client.get("/v1/catalog/images", headers=acme, params={"limit": 3}).json()
    assert mine["total"] == 4 and ids(mine) == [added[i]["image_id"] for i in (0, 1, 3)]  # Zeta's is neither shown nor counted
    assert client.get("/v1/catalog/images", headers=acme, params={"brand": "Zeta"}).json() == {"images": [], "total": 0}


def test_the_api_and_the_console_page_the_same_query(client: TestClient, core: ServiceCore, added: list[dict[str, Any]]) -> None:
    over_api = client.get("/v1/catalog/images", params={"brand": "Acme"}).json()
    refs, total = catalog_images(core, frozenset({"Acme"}), "Acme", None, None)
    assert total == over_api["total"] == 4
    assert [ref.image_id for ref in refs] == ids(over_api)[::-1]  # the console shows the newest first
    assert [ref.as_dict() for ref in reversed(refs)] == over_api["images"]


def test_only_one_page_of_rows_is_read(client: TestClient, core: ServiceCore, added: list[dict[str, Any]]) -> None:
    with statements(core) as seen:
        page = client.get("/v1/catalog/images", params={"limit": 2, "offset": 1}).json()
    assert page["total"] == 5 and len(page["images"]) == 2
    reads = [sql for sql in seen if sql.startswith("SELECT") and "reference_images" in sql]
    assert reads, seen
    paged = [sql for sql in reads if "count(" not in sql]
    assert paged and all("LIMIT" in sql and "OFFSET" in sql for sql in paged), paged  # no read of the whole catalog
    assert any("count(" in sql for sql in reads)  # counted in SQL too
