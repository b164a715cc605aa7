"""Rolling a model out: prepare beside the serving one, switch atomically, follow the registry, roll back."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from cli.main import cli
from embeddings import ModelSpec
from embeddings.loading import load_visual, save_checkpoint
from service.config import Settings
from service.core import ServiceCore
from service.models.registry import ModelRecord, ModelRegistry, NothingToRollBack
from service.runtime import ServiceRuntime
from service.scanning.batching import UNMEASURED_BATCH_LIMIT, ScanBatcher
from service.scanning.photo_prep import PhotoInput
from service.scanning.pipeline import ScanRequest
from tests import imaging
from tests.helpers import TINY_MODEL_FLAGS, add_reference, scan, tiny_settings


@pytest.fixture
def other_checkpoint(tmp_path: Path) -> Path:
    """A tiny-model checkpoint with other weights than the serving one (seed 1 instead of 0)."""
    loaded = load_visual(ModelSpec(name="cs-tiny-vit", pretrained=None, allow_random_weights=True, seed=1))
    path = tmp_path / "other.pt"
    save_checkpoint(path, "cs-tiny-vit", loaded, {"note": "test"})
    return path


def wait_for(predicate: Callable[[], bool], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_registry_records_history_and_rolls_back(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    assert registry.active() is None
    with pytest.raises(NothingToRollBack):
        registry.rollback()
    first = ModelRecord("a", "x", None, "f" * 64, "a/x", "t1")
    second = ModelRecord("b", None, "/c.pt", "e" * 64, "checkpoint:c.pt", "t2")
    registry.record(first)
    registry.record(second)
    assert registry.active() == second and registry.history() == [first]
    back = registry.rollback()
    assert (back.fingerprint, registry.history()) == (first.fingerprint, [])


def test_prepare_then_activate_catches_up_with_writes(core: ServiceCore, other_checkpoint: Path) -> None:
    first = core.writer.add_reference(PhotoInput(imaging.jpeg(1)), "Acme", "runner", "authentic").ref
    old = core.model.embedder.info.fingerprint
    prepared = core.models.prepare(ModelSpec(checkpoint=other_checkpoint))
    assert core.model.embedder.info.fingerprint == old  # still serving the old model
    late = core.writer.add_reference(PhotoInput(imaging.jpeg(2)), "Acme", "runner", "counterfeit").ref  # written meanwhile
    core.models.activate(prepared)
    assert core.model.embedder.info.fingerprint == prepared.embedder.info.fingerprint != old
    assert set(core.model.index.ids().tolist()) == {first.key, late.key}
    result = core.pipeline.scan([PhotoInput(imaging.jpeg(2))]).model_dump()
    assert result["model"]["fingerprint"] == core.model.embedder.info.fingerprint
    assert result["images"][0]["matches"][0]["image_id"] == late.image_id
    assert result["index_version"] == core.model.index.version


def test_http_activation_does_not_fail_concurrent_scans(
    make_client: Callable[..., TestClient], settings: Settings, other_checkpoint: Path
) -> None:
    client = make_client(settings)
    for seed in range(4):
        add_reference(client, imaging.jpeg(seed), label="counterfeit" if seed % 2 else "authentic")
    old = client.get("/v1/admin/model").json()["serving"]["fingerprint"]
    seen: list[tuple[int, str]] = []
    similarities: list[float] = []
    stop = threading.Event()

    def keep_scanning() -> None:
        """Three-photo listings, which the two workers split between batches: every photo of each must come back,
        matched to its own catalog image, before, during and after the switch."""
        while not stop.is_set():
            files = [("images", (f"q{i}.jpg", imaging.jpeg(1), "image/jpeg")) for i in range(3)]
            response = client.post("/v1/scan", files=files)
            body = response.json()
            seen.append((response.status_code, body.get("model", {}).get("fingerprint", "")))
            similarities.extend(image["matches"][0]["similarity"] for image in body.get("images", []))

    workers = [threading.Thread(target=keep_scanning) for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        accepted = client.post("/v1/admin/model/activate", json={"checkpoint": str(other_checkpoint)})
        assert accepted.status_code == 202 and accepted.json()["state"] == "preparing"
        wait_for(lambda: client.get("/v1/admin/model").json()["switch"]["state"] != "preparing")
        status = client.get("/v1/admin/model").json()
        assert status["switch"]["state"] == "done", status["switch"]
        new = status["serving"]["fingerprint"]
        wait_for(lambda: any(fp == new for _, fp in seen))
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert new != old and status["active"]["fingerprint"] == new
    assert {code for code, _ in seen} == {200}, "a scan failed during the switch"
    assert len(similarities) == 3 * len(seen) and min(similarities) > 0.999, "a photo missed its own catalog image"
    assert {fp for _, fp in seen} <= {old, new}
    assert scan(client, [imaging.jpeg(3)])["model"]["fingerprint"] == new
    assert client.get("/readyz").json()["index_size"] == 4

    rolled = client.post("/v1/admin/model/rollback")
    assert rolled.status_code == 202
    wait_for(lambda: client.get("/v1/admin/model").json()["switch"]["state"] == "done")
    wait_for(lambda: client.get("/v1/admin/model").json()["serving"]["fingerprint"] == old)
    assert client.post("/v1/admin/model/rollback").status_code == 409  # nothing older than the first model


def test_a_listing_queued_across_a_switch_is_embedded_and_searched_by_the_new_model(
    core: ServiceCore, other_checkpoint: Path
) -> None:
    """Decoded under the old model, taken by a worker after the switch: the listing is pinned to the model serving
    when its photos are taken, and every photo is embedded and searched by that one model."""
    refs = [core.writer.add_reference(PhotoInput(imaging.jpeg(40 + i)), "Acme", "runner", "authentic").ref for i in range(2)]
    prepared = core.models.prepare(ModelSpec(checkpoint=other_checkpoint))
    # one worker that waits up to 2 s for a fuller batch: the switch happens while the listing waits in the queue
    settings = core.settings.updated(inference_workers=1, batch_max_size=16, batch_max_wait_ms=2000.0)
    with ScanBatcher(core.pipeline, settings) as batcher:
        future = batcher.submit(ScanRequest([PhotoInput(imaging.jpeg(40 + i % 2)) for i in range(4)], None, record=False))
        time.sleep(0.3)  # decoded and queued by now (a few milliseconds); the worker waits for more photos
        assert not future.done()
        core.models.activate(prepared)
        result = future.result(timeout=30).model_dump()
    assert result["model"]["fingerprint"] == prepared.embedder.info.fingerprint
    tops = [image["matches"][0] for image in result["images"]]
    assert [top["image_id"] for top in tops] == [refs[i % 2].image_id for i in range(4)]
    assert min(top["similarity"] for top in tops) > 0.999


def test_bad_activations_are_refused(client: TestClient, tmp_path: Path) -> None:
    assert client.post("/v1/admin/model/activate", json={}).status_code == 422
    missing = client.post("/v1/admin/model/activate", json={"checkpoint": str(tmp_path / "nope.pt")})
    assert missing.status_code == 422 and "no checkpoint file" in missing.json()["detail"]
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert client.post("/v1/admin/model/activate", json={"checkpoint": str(junk)}).status_code == 202
    wait_for(lambda: client.get("/v1/admin/model").json()["switch"]["state"] != "preparing")
    status: dict[str, Any] = client.get("/v1/admin/model").json()
    assert status["switch"]["state"] == "failed" and "not a readable torch file" in status["switch"]["error"]
    assert status["active"] is None
    assert scan(client, [imaging.jpeg(1)])["model"]["architecture"] == "cs-tiny-vit"  # still serving


def test_cli_activation_reaches_a_running_service(
    make_client: Callable[..., TestClient], data_dir: Path, other_checkpoint: Path
) -> None:
    client = make_client(tiny_settings(data_dir, index_save_interval_s=0.05))
    add_reference(client, imaging.jpeg(5))
    old = client.get("/v1/admin/model").json()["serving"]["fingerprint"]

    def run(*args: str) -> dict[str, Any]:
        result = CliRunner().invoke(cli, [*args, *TINY_MODEL_FLAGS, "--data-dir", str(data_dir)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        body: dict[str, Any] = json.loads(result.stdout)
        return body

    activated = run("model", "activate", str(other_checkpoint))
    new = activated["active"]["fingerprint"]
    assert new != old and activated["index_size"] == 1
    wait_for(lambda: client.get("/v1/admin/model").json()["serving"]["fingerprint"] == new)
    listed = run("model", "list")
    assert listed["active"]["fingerprint"] == new and listed["active"]["checkpoint"].startswith(str(data_dir))
    assert run("model", "info")["fingerprint"] == new
    run("model", "rollback")
    wait_for(lambda: client.get("/v1/admin/model").json()["serving"]["fingerprint"] == old)


def test_a_switched_model_gets_its_own_measured_batch_limit(data_dir: Path, other_checkpoint: Path) -> None:
    """batch_max_size 0: measured on the model served at start, then again on the model a switch brings in."""
    settings = tiny_settings(data_dir, batch_max_size=0, index_save_interval_s=0.1)
    core = ServiceCore.open(settings)
    runtime = ServiceRuntime(settings, core)
    try:
        runtime.start()
        batcher = runtime.batcher()
        first = core.model.embedder.info.fingerprint
        assert runtime.batch_limit_model == first
        assert runtime.switcher.switch(core, ModelSpec(checkpoint=other_checkpoint), wait=True)["state"] == "done"
        second = core.model.embedder.info.fingerprint
        assert second != first
        wait_for(lambda: runtime.batch_limit_model == second)
        assert 1 <= batcher.max_batch == runtime.batch_max_size <= UNMEASURED_BATCH_LIMIT
    finally:
        runtime.stop()
        core.close()
