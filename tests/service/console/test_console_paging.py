"""Console page numbers: whatever a link or a user types, a page (clamped like the API's paging), never a 500."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.service.console.helpers import TwoBrands, sign_in

HUGE = ("4611686018427387904", "288230376151711744", "9" * 5000)


@pytest.mark.parametrize("page", [*HUGE, "5", "-3", "0", "abc", "1.5", ""])
def test_review_queue_pages_are_clamped(web: TestClient, brands: TwoBrands, page: str) -> None:
    assert sign_in(web, brands.acme_key).status_code == 303
    response = web.get(f"/console/review?page={page}")
    assert response.status_code == 200, response.text
    assert f"/console/scans/{brands.acme_scan}" in response.text  # the last (only) page, with the Acme scan on it
    assert f"/console/scans/{brands.bolt_scan}" not in response.text


@pytest.mark.parametrize("page", [*HUGE, "2", "-1", "x"])
def test_catalog_pages_are_clamped(web: TestClient, brands: TwoBrands, page: str) -> None:
    assert sign_in(web, brands.admin_key).status_code == 303
    response = web.get(f"/console/catalog?brand=Acme&page={page}")
    assert response.status_code == 200, response.text
    assert all(f"/console/catalog/images/{image_id}/thumbnail" in response.text for image_id in brands.acme_images)
    assert not any(image_id in response.text for image_id in brands.bolt_images)


@pytest.mark.both_databases  # PostgreSQL: OFFSET and LIMIT are 64-bit there too, whatever the page asked
def test_huge_pages_are_clamped_on_either_database(web: TestClient, brands: TwoBrands) -> None:
    assert sign_in(web, brands.admin_key).status_code == 303
    for page in HUGE:
        review = web.get(f"/console/review?page={page}")
        assert review.status_code == 200 and f"/console/scans/{brands.acme_scan}" in review.text, page
        catalog = web.get(f"/console/catalog?brand=Acme&page={page}")
        assert catalog.status_code == 200, page
        assert all(f"/console/catalog/images/{image_id}/thumbnail" in catalog.text for image_id in brands.acme_images)
