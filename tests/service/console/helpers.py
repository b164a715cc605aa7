"""Shortcuts for console tests over plain HTTP: sign in through the form, find CSRF tokens, seed two brands."""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx2
from fastapi.testclient import TestClient

from service.core import ServiceCore
from service.scanning.photo_prep import PhotoInput
from tests import imaging

HIDDEN_CSRF = re.compile(r'name="csrf_token" value="([^"]*)"')


def hidden_csrf(html: str) -> str:
    match = HIDDEN_CSRF.search(html)
    assert match, "no csrf_token field on the page"
    return match.group(1)


def sign_in(client: TestClient, key: str, next_url: str = "") -> httpx2.Response:
    """Sign in through the real form (GET for its token and cookie, then POST); returns the POST's answer."""
    page = client.get("/console/sign-in")
    assert page.status_code == 200, page.text
    data = {"api_key": key, "csrf_token": hidden_csrf(page.text), "next": next_url}
    return client.post("/console/sign-in", data=data, follow_redirects=False)


def page_csrf(client: TestClient, path: str = "/console/review") -> str:
    response = client.get(path)
    assert response.status_code == 200, response.text
    return hidden_csrf(response.text)


@dataclass
class TwoBrands:
    """Acme and Bolt, each with reference images and a flagged scan; a key per brand and an admin key."""

    acme_key: str
    bolt_key: str
    admin_key: str
    scanner_key: str
    acme_images: list[str]
    bolt_images: list[str]
    acme_scan: str
    bolt_scan: str


def seed_two_brands(core: ServiceCore) -> TwoBrands:
    images: dict[str, list[str]] = {"Acme": [], "Bolt": []}
    for seed in range(8):
        brand = "Acme" if seed < 4 else "Bolt"
        label = "counterfeit" if seed % 2 == 0 else "authentic"
        added = core.writer.add_reference(PhotoInput(imaging.jpeg(seed)), brand, "runner" if seed < 4 else "boot", label, "tests")
        images[brand].append(added.ref.image_id)
    scans = {}
    for brand, seed in (("Acme", 0), ("Bolt", 4)):  # each a copy of a known fake of its brand: flagged
        result = core.pipeline.scan(
            [PhotoInput(imaging.jpeg(seed))], brand=brand, listing_id=f"{brand}-listing", actor="tests"
        ).model_dump()
        assert result["verdict"] in ("likely_counterfeit", "needs_review"), result["verdict"]
        scans[brand] = result["scan_id"]
    keys = core.keys
    return TwoBrands(
        acme_key=keys.create("brand", ["Acme"], "acme team")[1],
        bolt_key=keys.create("brand", ["Bolt"], "bolt team")[1],
        admin_key=keys.create("admin", [], "admin")[1],
        scanner_key=keys.create("scanner", [], "pipeline")[1],
        acme_images=images["Acme"],
        bolt_images=images["Bolt"],
        acme_scan=scans["Acme"],
        bolt_scan=scans["Bolt"],
    )
