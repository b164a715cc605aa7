"""Request bodies: the key is checked before any body byte is read, and each route has its own body bound.

A body that announces more than its route takes is refused (413) before it is read; one that streams past the bound
(no Content-Length) is cut off. A request without a valid key (or, in the console, a session) is answered at once,
whatever body it announces, and that body is never read.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient

from service.api.body_limit import service_body_bounds
from service.app import create_app
from service.config import Settings
from service.core import ServiceCore
from tests.behaviour.test_concurrency import ThreadedServer
from tests.helpers import stored_state, tiny_settings
from tests.service.console.helpers import sign_in

KIB = 1024
MIB = 1024 * 1024
HUGE = 120 * MIB  # the review's body: 120 MB of JSON


class Body:
    """A request body made as it is read, which records how much of it was read."""

    def __init__(self, size: int, fill: bytes = b" ") -> None:
        self.size = size
        self.fill = fill
        self.read = 0

    def __iter__(self) -> Iterator[bytes]:
        while self.read < self.size:
            n = min(MIB, self.size - self.read)
            self.read += n
            yield self.fill * n

    def headers(self, content_type: str = "application/json") -> dict[str, str]:
        return {"content-type": content_type, "content-length": str(self.size)}


@pytest.fixture
def bounded_settings(data_dir: Path) -> Settings:
    return tiny_settings(data_dir, max_image_bytes=30_000, max_request_bytes=200_000, import_max_upload_bytes=100_000)


@pytest.fixture
def bounded(make_client: Callable[..., TestClient], bounded_settings: Settings) -> TestClient:
    return make_client(bounded_settings)


# --- the key first ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/v1/scans/scan_x/feedback", "application/json"),
        ("/v1/admin/model/activate", "application/json"),
        ("/v1/scan", "multipart/form-data; boundary=xyz"),
        ("/v1/catalog/imports", "multipart/form-data; boundary=xyz"),
    ],
)
@pytest.mark.parametrize("key", [None, "Bearer cs_key_0000_nope"])
def test_a_keyless_huge_body_is_answered_401_unread(client: TestClient, path: str, content_type: str, key: str | None) -> None:
    body = Body(HUGE)
    headers = {**body.headers(content_type), "Authorization": key or ""}
    started = time.perf_counter()
    response = client.post(path, content=body, headers=headers)
    assert response.status_code == 401, response.text
    assert "API key" in response.json()["detail"]
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.headers["connection"] == "close"  # the announced body is never read: the connection ends
    assert body.read == 0
    assert time.perf_counter() - started < 2.0


def test_a_key_without_the_role_is_answered_403_unread(client: TestClient, core: ServiceCore) -> None:
    token = core.keys.create("scanner", [], "pipeline")[1]
    body = Body(HUGE)
    headers = {**body.headers("multipart/form-data; boundary=xyz"), "Authorization": f"Bearer {token}"}
    response = client.post("/v1/catalog/imports", content=body, headers=headers)
    assert response.status_code == 403, response.text
    assert response.json()["detail"] == "a scanner key may not do this (needs admin or brand)"
    assert body.read == 0


def test_health_checks_stay_open_and_metrics_keeps_its_key(client: TestClient) -> None:
    bare = {"Authorization": ""}
    assert client.get("/healthz", headers=bare).json() == {"status": "ok"}
    assert client.get("/readyz", headers=bare).status_code == 200
    assert client.get("/metrics", headers=bare).status_code == 401
    assert "counterfeit_scan_rejected_total" in client.get("/metrics").text


def test_over_a_socket_the_401_comes_before_the_body_is_sent(
    make_core: Callable[[Settings], ServiceCore], settings: Settings
) -> None:
    """The review's case through uvicorn: 120 MB of JSON announced, 64 KiB sent; the answer must not wait for the rest."""
    core = make_core(settings)
    with ThreadedServer(create_app(settings, core=core)) as server:
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            head = (
                f"POST /v1/scans/scan_x/feedback HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {HUGE}\r\n\r\n"
            )
            started = time.perf_counter()
            sock.sendall(head.encode() + b"{" + b" " * (64 * KIB))
            answer = sock.recv(65536)  # times out (10 s) if the service waits for the body
            elapsed = time.perf_counter() - started
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
        assert b"API key" in answer
        assert elapsed < 5.0
        with httpx.Client(base_url=server.url, timeout=10) as http:
            started = time.perf_counter()
            assert http.get("/healthz").status_code == 200
            assert time.perf_counter() - started < 2.0


# --- each route its bound -----------------------------------------------------------------------------------------
# With bounded_settings: max_image_bytes 30 000, max_request_bytes 200 000, import_max_upload_bytes 100 000.
API_BOUNDS = [
    ("POST", "/v1/scan", 200_000),
    ("POST", "/v1/catalog/images", 30_000 + 64 * KIB),  # one image and its form fields
    ("PATCH", "/v1/catalog/images/ref_x", 64 * KIB),  # JSON
    ("POST", "/v1/catalog/imports", 100_000 + MIB),  # the archive and the form around it
    ("POST", "/v1/scans/scan_x/feedback", 64 * KIB),
    ("POST", "/v1/admin/model/activate", 64 * KIB),
    ("POST", "/v1/admin/model/rollback", 64 * KIB),
    ("GET", "/v1/catalog/brands", 16 * KIB),  # no body expected: the small default
    ("DELETE", "/v1/catalog/images/ref_x", 16 * KIB),
    ("POST", "/v1/nowhere", 16 * KIB),  # unknown paths too
]


@pytest.mark.parametrize(("method", "path", "bound"), API_BOUNDS)
def test_each_api_route_has_its_own_bound(bounded: TestClient, method: str, path: str, bound: int) -> None:
    over = Body(bound + 1)
    response = bounded.request(method, path, content=over, headers=over.headers())
    assert response.status_code == 413, response.text
    assert response.json()["detail"] == f"request body is larger than {bound} bytes"
    assert over.read == 0  # refused on its Content-Length, before parsing
    at = bounded.request(method, path, content=b" " * bound, headers={"content-type": "application/json"})
    assert at.status_code != 413, at.text  # the route's own answer to a body of junk (400, 404, 409, 422)


def test_a_too_big_json_body_with_a_valid_key_is_refused_before_parsing(bounded: TestClient, data_dir: Path) -> None:
    before = stored_state(bounded, data_dir)
    valid_json = b'{"verdict": "confirmed_counterfeit", "note": "' + b"x" * (70 * KIB) + b'"}'
    response = bounded.post("/v1/scans/scan_x/feedback", content=valid_json, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "larger than 65536 bytes" in response.json()["detail"]

    def streamed() -> Iterator[bytes]:  # no Content-Length: cut off while it streams in
        for start in range(0, len(valid_json), 8 * KIB):
            yield valid_json[start : start + 8 * KIB]

    chunked = bounded.post("/v1/scans/scan_x/feedback", content=streamed(), headers={"content-type": "application/json"})
    assert chunked.status_code == 413 and "larger than 65536 bytes" in chunked.json()["detail"]
    assert stored_state(bounded, data_dir) == before
    assert bounded.get("/healthz").status_code == 200
    assert 'counterfeit_scan_rejected_total{status="413"} 2.0' in bounded.get("/metrics").text


def test_every_route_that_takes_a_body_is_in_the_table(bounded_settings: Settings, core: ServiceCore) -> None:
    """A new upload route must say how much it takes, not fall back to the small default."""
    app = create_app(bounded_settings, core=core)
    table = {(bound.method, bound.path) for bound in service_body_bounds(bounded_settings).bounds}
    routes = {
        (method, route.path_format)
        for route in iter_route_contexts(app.router.routes)
        for method in (route.methods or ())
        if method in ("POST", "PUT", "PATCH")
    }
    assert routes, "no routes found"
    assert routes - table == set()
    assert table - routes == set()  # and the table names no route that is gone


# --- the console --------------------------------------------------------------------------------------------------
@pytest.fixture
def console(bounded_settings: Settings, core: ServiceCore) -> Iterator[TestClient]:
    with TestClient(create_app(bounded_settings, core=core), base_url="https://testserver") as web:
        yield web


CONSOLE_BOUNDS = [
    ("/console/sign-out", 64 * KIB),
    ("/console/catalog/images", 200_000),  # a drop of photos: as much as a scan takes
    ("/console/catalog/images/ref_x/delete", 64 * KIB),
    ("/console/catalog/images/ref_x/label", 64 * KIB),
    ("/console/catalog/imports", 100_000 + MIB),
    ("/console/scans/scan_x/feedback", 64 * KIB),
]


@pytest.mark.parametrize(("path", "bound"), CONSOLE_BOUNDS)
def test_console_posts_need_a_session_before_their_body_is_read(console: TestClient, path: str, bound: int) -> None:
    body = Body(HUGE)
    response = console.post(path, content=body, headers=body.headers("multipart/form-data; boundary=xyz"))
    assert response.status_code == 401, response.text
    assert "sign in" in response.text.lower()
    assert body.read == 0


@pytest.mark.parametrize(("path", "bound"), CONSOLE_BOUNDS)
def test_each_console_route_has_its_own_bound(console: TestClient, core: ServiceCore, path: str, bound: int) -> None:
    assert sign_in(console, core.keys.create("admin", [], "console")[1]).status_code == 303
    over = Body(bound + 1)
    response = console.post(path, content=over, headers=over.headers("multipart/form-data; boundary=xyz"))
    assert response.status_code == 413, response.text
    assert response.json()["detail"] == f"request body is larger than {bound} bytes"
    assert over.read == 0
    at = console.post(path, content=b" " * bound, headers={"content-type": "application/x-www-form-urlencoded"})
    assert at.status_code != 413, at.text  # the CSRF check's answer to a form of junk


def test_console_sign_in_form_is_small(console: TestClient) -> None:
    over = Body(64 * KIB + 1)
    response = console.post("/console/sign-in", content=over, headers=over.headers("application/x-www-form-urlencoded"))
    assert response.status_code == 413 and over.read == 0
