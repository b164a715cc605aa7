"""/healthz, /readyz (background model loading), /metrics, the OpenAPI docs, and a real uvicorn server."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import uvicorn
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.core import ServiceCore
from tests import imaging
from tests.helpers import add_reference, admin_token, scan, sha256, tiny_settings


def test_healthz(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_reports_model_and_index(client: TestClient, core: ServiceCore) -> None:
    body = client.get("/readyz").json()
    assert body["status"] == "ready"
    assert body["index_size"] == 0
    assert body["index_version"] == core.model.index.version
    assert body["model"]["fingerprint"] == core.model.embedder.info.fingerprint
    add_reference(client, imaging.jpeg(1))
    assert client.get("/readyz").json()["index_size"] == 1


def wait_until_ready(client: TestClient, timeout: float = 120.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        response = client.get("/readyz")
        if response.status_code == 200:
            body: dict[str, object] = response.json()
            return body
        assert response.status_code == 503
        assert time.monotonic() < deadline, f"not ready after {timeout}s: {response.text}"
        time.sleep(0.05)


def test_app_loads_the_model_in_the_background(tmp_path: Path) -> None:
    settings = tiny_settings(tmp_path / "fresh")  # a fresh data dir: the ONNX export alone takes a while
    token = admin_token(settings)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {token}"}) as client:
        first = client.get("/readyz")
        early_scan = client.post("/v1/scan", files=[("images", ("a.jpg", imaging.jpeg(1), "image/jpeg"))])
        still_loading = client.get("/readyz").status_code == 503
        assert first.status_code == 503
        assert first.json()["status"] == "not_ready"
        assert client.get("/healthz").status_code == 200  # alive while loading
        if still_loading:
            assert early_scan.status_code == 503
            assert early_scan.headers["retry-after"] == "5"
            assert "not ready" in early_scan.json()["detail"]

        body = wait_until_ready(client)
        assert body["index_size"] == 0
        added = add_reference(client, imaging.jpeg(1))
        assert scan(client, [imaging.jpeg(1)])["images"][0]["matches"][0]["image_id"] == added["image_id"]


def test_a_model_that_cannot_load_keeps_the_service_unready(tmp_path: Path) -> None:
    # No weights and random weights not allowed: never a silent fallback to a random model.
    settings = Settings(data_dir=tmp_path / "d", model="cs-tiny-vit", pretrained=None)
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 60
        while "ModelLoadError" not in (detail := client.get("/readyz").json()["detail"]):
            assert time.monotonic() < deadline, detail
            time.sleep(0.05)
        assert "no weights configured for 'cs-tiny-vit'" in detail
        assert "COUNTERFEIT_SCAN_CHECKPOINT" in detail
        assert client.get("/v1/catalog/brands").status_code == 401  # no key: refused before anything else
        response = client.get("/v1/catalog/brands", headers={"Authorization": f"Bearer {admin_token(settings)}"})
        assert response.status_code == 503
        assert "ModelLoadError" in response.json()["detail"]
        assert client.get("/healthz").status_code == 200


def test_metrics(client: TestClient) -> None:
    add_reference(client, imaging.jpeg(1), label="counterfeit")
    scan(client, [imaging.jpeg(1)], brand="Acme")
    scan(client, [imaging.jpeg(2), imaging.jpeg(3)], brand="Nobody")
    assert client.post("/v1/scan", files=[("images", ("x", b"text", "text/plain"))]).status_code == 415
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    lines = set(response.text.splitlines())
    assert "# TYPE counterfeit_scan_scans_total counter" in lines
    assert 'counterfeit_scan_scans_total{verdict="likely_counterfeit"} 1.0' in lines
    assert 'counterfeit_scan_scans_total{verdict="not_in_catalog"} 1.0' in lines
    assert "counterfeit_scan_photos_total 3.0" in lines
    assert 'counterfeit_scan_rejected_total{status="415"} 1.0' in lines
    assert "counterfeit_scan_catalog_images 1.0" in lines
    assert 'counterfeit_scan_catalog_changes_total{kind="add"} 1.0' in lines
    assert "counterfeit_scan_scan_seconds_count 2.0" in lines


def test_docs_and_openapi(client: TestClient) -> None:
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()
    spec = client.get("/openapi.json").json()
    assert spec["info"]["title"] == "counterfeit-scan"
    for path in (
        "/v1/scan",
        "/v1/scans/{scan_id}",
        "/v1/catalog/images",
        "/v1/catalog/brands",
        "/v1/catalog/products",
        "/v1/catalog/images/{image_id}",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in spec["paths"], path
    assert "delete" in spec["paths"]["/v1/catalog/images/{image_id}"]
    verdicts = spec["components"]["schemas"]["ScanOut"]["properties"]["verdict"]["enum"]
    assert set(verdicts) == {"likely_counterfeit", "needs_review", "likely_authentic", "not_in_catalog"}


def test_catalog_and_index_survive_an_app_restart(
    make_client: Callable[..., TestClient], make_core: Callable[[Settings], ServiceCore], settings: Settings
) -> None:
    first = make_client(settings)
    added = [add_reference(first, imaging.jpeg(seed)) for seed in (1, 2, 3)]
    version = first.get("/readyz").json()["index_version"]
    first.__exit__(None, None, None)  # lifespan shutdown saves the index

    second = make_client(settings, make_core(settings))
    ready = second.get("/readyz").json()
    assert (ready["index_version"], ready["index_size"]) == (version, 3)
    for seed, ref in zip((1, 2, 3), added, strict=True):
        assert scan(second, [imaging.jpeg(seed)])["images"][0]["matches"][0]["image_id"] == ref["image_id"]


def test_real_uvicorn_server_on_loopback(core: ServiceCore, settings: Settings) -> None:
    server = uvicorn.Server(uvicorn.Config(create_app(settings, core=core), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        token = core.keys.create("admin", [], "tests")[1]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, headers={"Authorization": f"Bearer {token}"}) as http:
            assert http.get("/healthz").json() == {"status": "ok"}
            data = imaging.jpeg(7)
            added = http.post(
                "/v1/catalog/images",
                files={"file": ("a.jpg", data, "image/jpeg")},
                data={"brand": "Acme", "product": "runner", "label": "authentic"},
            )
            assert added.status_code == 201, added.text
            result = http.post("/v1/scan", files=[("images", ("q.jpg", data, "image/jpeg"))]).json()
            assert result["images"][0]["sha256"] == sha256(data)
            assert result["images"][0]["matches"][0]["image_id"] == added.json()["image_id"]
            assert http.post("/v1/scan", files=[("images", ("q.jpg", b"nope", "image/jpeg"))]).status_code == 400
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert not thread.is_alive()
