"""The console in a real browser: Playwright driving headless Chromium (Debian's `chromium`, not Playwright's download)
against the real app behind uvicorn on loopback, with the tiny random-weights model (the UI flow, not the scores).

One server and one browser per module; each test has its own browser context (cookies). Screenshots of the main pages
go to test-artifacts/screenshots/.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from embeddings import ImageEmbedder
from service.app import create_app
from service.core import ServiceCore
from tests import imaging
from tests.archives import manifest, zip_bytes
from tests.helpers import REPO_ROOT, pick_sneakers, read_rows, shared_set, tiny_settings

try:
    from playwright.sync_api import Browser, BrowserContext, FilePayload, Page, ViewportSize, expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the environment
    pytest.skip("playwright is not installed (pip install -e '.[dev]')", allow_module_level=True)

CHROMIUM = os.environ.get("COUNTERFEIT_SCAN_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip
SCREENSHOTS = REPO_ROOT / "test-artifacts" / "screenshots"
LAPTOP: ViewportSize = {"width": 1366, "height": 800}
TIMEOUT_MS = 20_000

if not CHROMIUM:
    pytest.skip(
        "no chromium browser: apt-get install chromium, or point COUNTERFEIT_SCAN_TEST_CHROMIUM at one",
        allow_module_level=True,
    )


@dataclass
class LiveConsole:
    url: str
    core: ServiceCore
    admin_key: str
    nike_key: str
    acme_key: str
    scanner_key: str
    sneakers: Path

    def api(self, key: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_embedder: ImageEmbedder) -> Iterator[LiveConsole]:
    """The real app on a free loopback port (uvicorn in a thread), with the console's default Secure cookie."""
    sneakers = shared_set("sneakers")
    settings = tiny_settings(tmp_path_factory.mktemp("console") / "data", import_chunk_rows=4)
    assert settings.console.cookie_secure  # Chromium keeps Secure cookies on http://127.0.0.1: no setting change
    core = ServiceCore(settings, tiny_embedder)
    core.index_keeper.sync()
    keys = core.keys
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(settings, core=core), log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield LiveConsole(
            url=f"http://127.0.0.1:{sock.getsockname()[1]}",
            core=core,
            admin_key=keys.create("admin", [], "admin")[1],
            nike_key=keys.create("brand", ["Nike"], "nike brand protection")[1],
            acme_key=keys.create("brand", ["Acme"], "acme team")[1],
            scanner_key=keys.create("scanner", [], "pipeline")[1],
            sneakers=sneakers,
        )
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
        core.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport=LAPTOP)
    ctx.set_default_timeout(TIMEOUT_MS)
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def page(context: BrowserContext) -> Iterator[Page]:
    """A tab whose script errors, htmx errors and Content-Security-Policy violations fail the test."""
    tab = context.new_page()
    problems: list[str] = []
    tab.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    tab.on(
        "console",
        lambda m: (
            problems.append(f"{m.text} ({tab.url})")
            if m.type == "error" and not m.text.startswith("Failed to load resource")  # the 4xx the tests ask for
            else None
        ),
    )
    yield tab
    assert problems == []


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    # caret="initial": hiding the caret leaves style="" on every input, which htmx then copies (a CSP violation)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True, caret="initial")


def sign_in(page: Page, live: LiveConsole, key: str) -> None:
    page.goto(f"{live.url}/console/sign-in")
    page.get_by_label("API key").fill(key)
    page.get_by_label("API key").press("Enter")  # the keyboard is enough
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def images_loaded(page: Page, selector: str) -> None:
    page.wait_for_function(
        "s => { const imgs = [...document.querySelectorAll(s)];"
        " return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0); }",
        arg=selector,
    )


def accessibility_problems(page: Page) -> list[str]:
    """Images without alt text, form controls without a label, buttons and links without a name."""
    problems: list[str] = page.evaluate(
        """() => {
          const out = [];
          for (const img of document.images) if (!img.alt.trim()) out.push('img without alt: ' + img.src);
          for (const el of document.querySelectorAll('input:not([type=hidden]), select, textarea')) {
            const labelled = (el.id && document.querySelector('label[for="' + el.id + '"]')) || el.closest('label')
              || el.getAttribute('aria-label') || el.getAttribute('aria-labelledby');
            if (!labelled) out.push('unlabelled ' + el.tagName + ' ' + (el.name || ''));
          }
          for (const el of document.querySelectorAll('button, a[href]'))
            if (!el.textContent.trim() && !el.getAttribute('aria-label') && !el.querySelector('img[alt]:not([alt=""])'))
              out.push('nameless ' + el.outerHTML.slice(0, 80));
          return out;
        }"""
    )
    return problems


def drop_file(page: Page, zone_selector: str, data: bytes, name: str, mime: str) -> None:
    """Drag and drop a file onto a drop zone, as a user dragging it from their desktop would."""
    page.evaluate(
        """([b64, name, mime, selector]) => {
          const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
          const transfer = new DataTransfer();
          transfer.items.add(new File([bytes], name, {type: mime}));
          const zone = document.querySelector(selector);
          for (const type of ['dragenter', 'dragover', 'drop'])
            zone.dispatchEvent(new DragEvent(type, {dataTransfer: transfer, bubbles: true, cancelable: true}));
        }""",
        [base64.b64encode(data).decode(), name, mime, zone_selector],
    )


def sneaker_archive(sneakers: Path, n: int) -> tuple[bytes, list[dict[str, str]]]:
    """A zip with manifest.csv and `n` reference photos of the four sneaker classes."""
    rows = pick_sneakers(read_rows(sneakers / "manifest.csv"), n, "reference")
    members = [("manifest.csv", manifest((r["path"], r["brand"], r["product"], r["label"]) for r in rows))]
    members += [(r["path"], (sneakers / r["path"]).read_bytes()) for r in rows]
    return zip_bytes(members), rows


def scan_listing(client: httpx.Client, photo: Path, brand: str, listing_id: str) -> dict[str, Any]:
    files = [("images", (photo.name, photo.read_bytes(), "image/jpeg"))]
    response = client.post("/v1/scan", files=files, data={"brand": brand, "listing_id": listing_id})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_sign_in_page_and_bad_keys(page: Page, context: BrowserContext, live: LiveConsole) -> None:
    page.goto(f"{live.url}/console/review")
    expect(page).to_have_url(f"{live.url}/console/sign-in?next=%2Fconsole%2Freview")
    expect(page.get_by_role("heading", name="Sign in to the console")).to_be_visible()
    expect(page.get_by_label("API key")).to_be_focused()  # autofocus
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Sign in")).to_be_focused()
    assert accessibility_problems(page) == []
    screenshot(page, "01-sign-in")

    page.get_by_label("API key").fill(live.nike_key[:-3] + "xyz")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("unknown or has been revoked")
    page.get_by_label("API key").fill(live.scanner_key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("scanner key cannot sign in")
    assert not [c for c in context.cookies() if c["name"] == "cs_console"]

    sign_in(page, live, live.nike_key)
    expect(page).to_have_url(f"{live.url}/console/review")
    (cookie,) = [c for c in context.cookies() if c["name"] == "cs_console"]
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"
    assert page.evaluate("document.cookie") == ""  # HTTP-only: invisible to scripts
    page.keyboard.press("Tab")  # keyboard users can skip the navigation
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("main")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_label("Verdict")).to_be_focused()


def test_import_scan_review_and_feedback(page: Page, live: LiveConsole) -> None:
    """A brand team's day: import an archive, see it in the catalog, scans arrive, review one, the catalog learns."""
    nike_api, admin_api = live.api(live.nike_key), live.api(live.admin_key)
    sign_in(page, live, live.nike_key)

    # Catalog: drop an archive of real sneaker photos; the job's progress is polled until it finishes.
    page.get_by_role("link", name="Catalog").click()
    expect(page).to_have_url(f"{live.url}/console/catalog?brand=Nike")
    archive, rows = sneaker_archive(live.sneakers, 8)
    drop_file(page, "form[hx-post$='/catalog/imports'] [data-dropzone]", archive, "sneakers.zip", "application/zip")
    job = page.locator(".job")
    expect(job).to_have_attribute("data-state", "succeeded", timeout=45_000)
    expect(job).to_contain_text("8 images added")
    page.get_by_role("link", name="Show the catalog").click()
    cards = page.locator("article.card")
    expect(cards).to_have_count(8)
    expect(page.locator("article.card .badge.counterfeit")).to_have_count(4)
    images_loaded(page, "article.card img")
    assert accessibility_problems(page) == []
    screenshot(page, "02-catalog")

    # A single photo through the file input, and a file that is not an image.
    page.get_by_text("Add to the catalog").click()  # folded away once the catalog has images
    form = page.locator("form[hx-post$='/catalog/images']")
    form.get_by_label("Product").fill("air-force-1")
    form.get_by_label("known fakes").check()
    extra = next(r for r in read_rows(live.sneakers / "manifest.csv") if r["split"] == "reference" and r not in rows)
    form.get_by_label("Drop JPEG, PNG or WebP photos here, or choose them").set_input_files(str(live.sneakers / extra["path"]))
    form.get_by_role("button", name="Upload photos").click()
    expect(page.locator("#upload-result")).to_contain_text("added as")
    not_an_image: FilePayload = {"name": "listing.pdf", "mimeType": "application/pdf", "buffer": b"%PDF-1.4 not an image"}
    form.get_by_label("Drop JPEG, PNG or WebP photos here, or choose them").set_input_files(files=[not_an_image])
    form.get_by_role("button", name="Upload photos").click()
    expect(page.locator("#upload-result [role=alert]")).to_contain_text("listing.pdf: unsupported content type")
    screenshot(page, "02-catalog-upload-error")

    # Relabel an image, then delete it (confirming the dialog).
    page.reload()
    expect(cards).to_have_count(9)
    first = cards.filter(has=page.locator(".badge.authentic")).first
    image_id = first.get_attribute("data-image-id")
    first.get_by_role("button", name="Mark known fake").click()
    relabelled = page.locator(f"article[data-image-id='{image_id}']")
    expect(relabelled).to_have_attribute("data-label", "counterfeit")
    expect(relabelled.get_by_role("status")).to_contain_text("Now labelled counterfeit")
    page.once("dialog", lambda dialog: dialog.accept())
    relabelled.get_by_role("button", name="Delete").click()
    expect(page.locator(f"article[data-image-id='{image_id}'][data-deleted]")).to_contain_text("Deleted")
    assert nike_api.get(f"/v1/catalog/images/{image_id}").status_code == 404

    # Scans arrive over the HTTP API (a brand key scans within its brand).
    queries = pick_sneakers(read_rows(live.sneakers / "manifest.csv"), 4, "query")
    scans = [scan_listing(nike_api, live.sneakers / r["path"], "Nike", f"L-{i}") for i, r in enumerate(queries)]
    flagged = [s for s in scans if s["verdict"] in ("likely_counterfeit", "needs_review")]
    assert flagged, [s["verdict"] for s in scans]

    page.get_by_role("link", name="Review queue").click()
    for s in flagged:
        expect(page.locator(f"tr[data-scan-id='{s['scan_id']}']")).to_be_visible()
    assert accessibility_problems(page) == []
    screenshot(page, "03-review-queue")
    page.get_by_label("Verdict").select_option(flagged[0]["verdict"])
    page.get_by_label("Minimum risk").fill("0")
    page.get_by_role("button", name="Apply").click()
    expect(page).to_have_url(f"{live.url}/console/review?verdict={flagged[0]['verdict']}&product=&reviewed=&min_risk=0")
    expect(page.locator("tbody tr")).to_have_count(len([s for s in flagged if s["verdict"] == flagged[0]["verdict"]]))

    # The scan's page: listing photo beside the references it matched; confirm it as a counterfeit.
    target = flagged[0]
    page.locator(f"tr[data-scan-id='{target['scan_id']}']").get_by_role("link").click()
    expect(page).to_have_url(f"{live.url}/console/scans/{target['scan_id']}")
    expect(page.locator(".listing-photo img")).to_have_count(1)
    images_loaded(page, ".listing-photo img, .match img")
    expect(page.locator(".match").first).to_contain_text("Nike")
    expect(page.locator(".facts")).to_contain_text(target["index_version"])
    expect(page.locator(".banner.warn")).to_contain_text("random weights")
    assert accessibility_problems(page) == []
    screenshot(page, "04-scan")
    before = nike_api.get("/v1/catalog/images", params={"label": "counterfeit"}).json()["total"]
    page.get_by_label("Note").fill("sole stitching differs")
    page.get_by_role("button", name="Confirm counterfeit").click()
    expect(page.locator("#feedback [role=status]")).to_contain_text("1 photo added to the catalog as known fakes")
    expect(page.locator("#feedback li[data-verdict=confirmed_counterfeit]")).to_contain_text("sole stitching differs")

    # The feedback changed the catalog: the listing photo is now a known fake, searchable at once.
    added = nike_api.get("/v1/catalog/images", params={"label": "counterfeit", "limit": 1000}).json()
    assert added["total"] == before + 1
    (new,) = [i for i in added["images"] if i["source"] == f"scan:{target['scan_id']}"]
    again = scan_listing(nike_api, live.sneakers / queries[0]["path"], "Nike", "L-again")
    assert any(d["image_id"] == new["image_id"] for d in again["images"][0]["near_duplicates"])
    page.goto(f"{live.url}/console/catalog?brand=Nike&label=counterfeit")
    expect(page.locator(f"article[data-image-id='{new['image_id']}']")).to_contain_text(f"scan:{target['scan_id']}")

    # Dashboard: this brand's scans and the reviewer's agreement.
    page.get_by_role("link", name="Dashboard").click()
    expect(page.locator("[data-figure=scans]")).to_have_text(str(len(scans) + 1))
    expect(page.locator(f"tr[data-verdict={target['verdict']}] td").first).to_have_text("1")
    assert accessibility_problems(page) == []
    screenshot(page, "05-dashboard")
    assert admin_api.get("/v1/audit", params={"action": "feedback.create"}).json()


def test_a_brand_never_sees_another_brand(page: Page, live: LiveConsole) -> None:
    """Acme's team and Nike's team share a service; neither sees the other's images or scans anywhere in the console."""
    admin_api = live.api(live.admin_key)
    acme_ids = []
    for seed in range(3):
        form = {"brand": "Acme", "product": "anvil", "label": "counterfeit" if seed == 0 else "authentic"}
        upload = {"file": (f"a{seed}.jpg", imaging.jpeg(seed), "image/jpeg")}
        added = admin_api.post("/v1/catalog/images", files=upload, data=form)
        assert added.status_code == 201, added.text
        acme_ids.append(added.json()["image_id"])
    acme_scan = admin_api.post("/v1/scan", files=[("images", ("q.jpg", imaging.jpeg(0), "image/jpeg"))],
                               data={"brand": "Acme", "listing_id": "ACME-1"}).json()  # fmt: skip
    assert acme_scan["verdict"] in ("likely_counterfeit", "needs_review")
    nike_api = live.api(live.nike_key)
    photo = next(r for r in read_rows(live.sneakers / "manifest.csv") if r["split"] == "query")
    nike_scan = scan_listing(nike_api, live.sneakers / photo["path"], "Nike", "NIKE-ISO")
    nike_image = nike_api.get("/v1/catalog/images", params={"limit": 1}).json()["images"][0]["image_id"]

    def isolated(key: str, mine: tuple[str, list[str]], theirs: tuple[str, str, str]) -> None:
        brand, my_images = mine
        other_brand, other_image, other_scan = theirs
        sign_in(page, live, key)
        page.get_by_role("link", name="Catalog").click()
        expect(page.locator(".tree")).to_contain_text(brand)
        expect(page.locator("main")).not_to_contain_text(other_brand)
        assert other_image not in page.content()
        page.goto(f"{live.url}/console/review")
        assert other_scan not in page.content() and other_brand not in page.inner_text("main")
        for url in (
            f"/console/scans/{other_scan}",
            f"/console/scans/{other_scan}/photos/1",
            f"/console/catalog/images/{other_image}/thumbnail",
            f"/console/catalog/images/{other_image}/content",
            f"/console/catalog?brand={other_brand}",
        ):
            response = page.goto(live.url + url)
            assert response is not None and response.status == 404, url
        expect(page.get_by_role("heading", name="Not found")).to_be_visible()
        page.goto(f"{live.url}/console/dashboard")
        expect(page.locator("main")).not_to_contain_text(other_brand)
        for image_id in my_images[:1]:
            response = page.goto(f"{live.url}/console/catalog/images/{image_id}/thumbnail")
            assert response is not None and response.status == 200
        page.goto(f"{live.url}/console/review")
        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_role("status")).to_contain_text("You are signed out")

    isolated(live.acme_key, ("Acme", acme_ids), ("Nike", nike_image, nike_scan["scan_id"]))
    isolated(live.nike_key, ("Nike", [nike_image]), ("Acme", acme_ids[0], acme_scan["scan_id"]))
    # The admin sees both brands' scans, and may open either.
    sign_in(page, live, live.admin_key)
    page.goto(f"{live.url}/console/review")
    expect(page.locator(f"tr[data-scan-id='{acme_scan['scan_id']}']")).to_be_visible()
    for scan_id in (acme_scan["scan_id"], nike_scan["scan_id"]):
        opened = page.goto(f"{live.url}/console/scans/{scan_id}")
        assert opened is not None and opened.status == 200


def test_posts_without_the_session_token_are_refused(page: Page, live: LiveConsole) -> None:
    sign_in(page, live, live.nike_key)
    image_id = live.api(live.nike_key).get("/v1/catalog/images", params={"limit": 1}).json()["images"][0]["image_id"]
    status = page.evaluate(
        "url => fetch(url, {method: 'POST', body: new URLSearchParams({csrf_token: 'forged'})}).then(r => r.status)",
        f"/console/catalog/images/{image_id}/delete",
    )
    assert status == 403
    url = f"/console/catalog/images/{image_id}/delete"
    no_token = page.evaluate("url => fetch(url, {method: 'POST'}).then(r => r.status)", url)
    assert no_token == 403
    assert live.api(live.nike_key).get(f"/v1/catalog/images/{image_id}").status_code == 200
