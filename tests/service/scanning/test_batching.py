"""Micro-batching of /v1/scan: concurrent scans share a model batch and each gets its own answer; backpressure; metrics."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from fastapi.testclient import TestClient

from embeddings import ImageEmbedder
from embeddings.batch_sizing import CPU_BATCH_CEILING, batch_ceiling, largest_fast_batch
from service.config import Settings
from service.core import ServiceCore
from service.metrics import ServiceMetrics
from service.runtime import ServiceRuntime
from service.scanning.batching import UNMEASURED_BATCH_LIMIT, ScanBatcher
from service.scanning.photo_prep import PhotoInput
from service.scanning.pipeline import ScanRequest
from tests import imaging
from tests.helpers import add_reference, scan, stored_state, tiny_settings

T = TypeVar("T")
VOLATILE = ("scan_id", "created_at")


def sample(client: TestClient, name: str, labels: dict[str, str] | None = None) -> float:
    value = client.app.state.metrics.registry.get_sample_value(name, labels or {})  # type: ignore[attr-defined]
    return float(value or 0.0)


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def post_scan(client: TestClient, seed: int) -> Any:
    return client.post("/v1/scan", files=[("images", ("p.jpg", imaging.jpeg(seed), "image/jpeg"))])


def test_concurrent_scans_share_a_batch_and_get_their_own_answers(make_client: Callable[..., TestClient], data_dir: Path) -> None:
    n = 6
    # A long wait and a batch of exactly n photos: the batch closes as soon as all n scans are queued.
    client = make_client(tiny_settings(data_dir, batch_max_size=n, batch_max_wait_ms=1000))
    refs = [add_reference(client, imaging.jpeg(100 + i), product=f"p{i}") for i in range(n)]
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(lambda i: scan(client, [imaging.jpeg(100 + i)], listing_id=f"L{i}"), range(n)))

    for i, result in enumerate(results):
        assert result["listing_id"] == f"L{i}"
        top = result["images"][0]["matches"][0]
        assert top["image_id"] == refs[i]["image_id"], f"scan {i} got another request's photo"
        assert top["similarity"] > 0.999
        assert client.get(f"/v1/scans/{result['scan_id']}").status_code == 200  # recorded, as before batching
    batches = sample(client, "counterfeit_scan_batch_photos_count")
    assert sample(client, "counterfeit_scan_batch_photos_sum") == n
    assert batches < n, "no two concurrent scans shared a model batch"
    assert sample(client, "counterfeit_scan_queue_photos") == 0


@pytest.mark.parametrize("workers", [1, 2])
def test_batched_results_equal_unbatched_ones(core: ServiceCore, workers: int) -> None:
    """Listings of 1..3 photos with mixed brand scopes in one batch: the same answers as core.scan, one by one."""
    for i in range(6):
        core.writer.add_reference(PhotoInput(imaging.jpeg(200 + i)), "Acme" if i % 2 else "Zeta", f"p{i % 3}", "authentic")
    listings = [([imaging.jpeg(200 + i), imaging.jpeg(300 + i)][: 1 + i % 2], "Acme" if i % 3 == 0 else None) for i in range(8)]
    listings.append(([imaging.jpeg(201), imaging.jpeg(203), imaging.jpeg(205)], "Zeta"))
    expected = [
        core.pipeline.scan([PhotoInput(d) for d in photos], brand, record=False).model_dump() for photos, brand in listings
    ]
    settings = core.settings.updated(batch_max_wait_ms=200.0, batch_max_size=8, inference_workers=workers)
    with ScanBatcher(core.pipeline, settings) as batcher:
        futures = [
            batcher.submit(ScanRequest([PhotoInput(d) for d in photos], brand, record=False)) for photos, brand in listings
        ]
        got = [future.result(timeout=30).model_dump() for future in futures]

    for mine, theirs in zip(got, expected, strict=True):
        assert mine["images"] and [m["image_id"] for m in mine["images"][0]["matches"]] == [
            m["image_id"] for m in theirs["images"][0]["matches"]
        ]
        assert _close(stable(mine), stable(theirs))


def stable(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in VOLATILE}


def _close(a: Any, b: Any) -> bool:
    """Equal up to float rounding (a batch of several rows may differ from a batch of one in the last digits)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) < 1e-4
    return bool(a == b)


def test_full_queue_answers_429_with_retry_after(make_client: Callable[..., TestClient], data_dir: Path) -> None:
    client = make_client(tiny_settings(data_dir, queue_max_photos=2, retry_after_s=7))
    add_reference(client, imaging.jpeg(1))
    core = client.app.state.runtime.core  # type: ignore[attr-defined]
    batcher = client.app.state.runtime.batcher()  # type: ignore[attr-defined]
    scans_before = stored_state(client, data_dir)["scans"]

    # Hold the index as a catalog write does: the two admitted scans are embedded, then wait to be searched.
    with ThreadPoolExecutor(2) as pool:
        core.model.index._lock.acquire()
        try:
            admitted = [pool.submit(post_scan, client, seed) for seed in (10, 11)]
            wait_for(lambda: batcher.in_flight == 2)
            refused = post_scan(client, 12)
        finally:
            core.model.index._lock.release()
        answers = [future.result(timeout=30) for future in admitted]

    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "7"
    assert "queue is full" in refused.json()["detail"]
    assert [a.status_code for a in answers] == [200, 200]
    assert sample(client, "counterfeit_scan_rejected_total", {"status": "429"}) == 1
    assert stored_state(client, data_dir)["scans"] == scans_before + 2  # the refused scan wrote nothing
    wait_for(lambda: batcher.in_flight == 0)
    assert post_scan(client, 13).status_code == 200  # room again once the queue drained


def test_a_bad_photo_fails_only_its_own_scan(make_client: Callable[..., TestClient], data_dir: Path) -> None:
    client = make_client(tiny_settings(data_dir, batch_max_size=4, batch_max_wait_ms=500))
    add_reference(client, imaging.jpeg(1))

    def send(i: int) -> Any:
        data = b"not an image at all" if i == 2 else imaging.jpeg(40 + i)
        return client.post("/v1/scan", files=[("images", ("p.jpg", data, "image/jpeg"))])

    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(send, range(4)))
    assert [r.status_code for r in responses] == [200, 200, 400, 200]
    assert "photo 1" in responses[2].json()["detail"]


def test_metrics_expose_queue_batches_and_latencies(client: TestClient) -> None:
    add_reference(client, imaging.jpeg(1))
    scan(client, [imaging.jpeg(2), imaging.jpeg(3)])
    text = client.get("/metrics").text
    for series in (
        "counterfeit_scan_queue_photos ",
        'counterfeit_scan_batch_photos_bucket{le="2.0"}',
        "counterfeit_scan_batch_photos_count",
        "counterfeit_scan_queue_wait_seconds_bucket",
        "counterfeit_scan_decode_seconds_count",
        "counterfeit_scan_inference_seconds_bucket",
        "counterfeit_scan_search_seconds_count",
        "counterfeit_scan_finish_seconds_count",
    ):
        assert series in text, series
    assert sample(client, "counterfeit_scan_batch_photos_sum") == 2
    batches = sample(client, "counterfeit_scan_batch_photos_count")
    assert batches in (1, 2)  # one batch, or the listing split between the two workers
    assert sample(client, "counterfeit_scan_inference_seconds_count") == batches


def test_batch_limit_zero_is_measured_on_the_served_model_before_it_is_ready(data_dir: Path) -> None:
    settings = tiny_settings(data_dir, batch_max_size=0)
    core = ServiceCore.open(settings)
    runtime = ServiceRuntime(settings, core)
    try:
        runtime.start()
        assert 1 <= runtime.batch_max_size <= UNMEASURED_BATCH_LIMIT
        assert runtime.batcher().max_batch == runtime.batch_max_size
    finally:
        runtime.stop()
        core.close()


def test_the_largest_batch_within_ten_percent_of_the_best_rate_is_chosen() -> None:
    # EfficientNet-Lite0 on 2 cores, measured: faster per photo in small batches
    assert largest_fast_batch({1: 107.0, 2: 100.0, 4: 93.0, 8: 90.0, 16: 86.0}) == 2
    # a GPU: the larger the better
    assert largest_fast_batch({1: 300.0, 2: 580.0, 4: 1100.0, 8: 2000.0, 16: 3500.0}) == 16
    # flat within the tolerance: batch as much as the limit allows
    assert largest_fast_batch({1: 10.0, 2: 10.5, 4: 10.2, 8: 9.9, 16: 9.6}) == 16


def test_batch_limits_are_measured_up_to_16_on_cpu(tiny_embedder: ImageEmbedder) -> None:
    assert batch_ceiling(tiny_embedder) == CPU_BATCH_CEILING == 16  # on a GPU 256: tests/embeddings/test_gpu.py


def test_several_workers_split_a_queue_instead_of_one_taking_it_all(core: ServiceCore) -> None:
    """Eight photos queued for two single-threaded workers: four each, not eight on one worker while the other idles."""
    core.writer.add_reference(PhotoInput(imaging.jpeg(1)), "Acme", "p", "authentic")
    settings = core.settings.updated(batch_max_wait_ms=2000.0, batch_max_size=8, inference_workers=2)
    metrics = ServiceMetrics()
    with ScanBatcher(core.pipeline, settings, metrics) as batcher:
        futures = [batcher.submit(ScanRequest([PhotoInput(imaging.jpeg(10 + i))], None, record=False)) for i in range(8)]
        assert all(future.result(timeout=30).model_dump()["images"] for future in futures)
    value = metrics.registry.get_sample_value
    assert value("counterfeit_scan_batch_photos_sum", {}) == 8
    batches = value("counterfeit_scan_batch_photos_count", {})
    assert batches is not None and batches >= 2
    assert value("counterfeit_scan_batch_photos_bucket", {"le": "4.0"}) == batches  # no batch above its share


@pytest.mark.parametrize(("workers", "max_batch", "photos"), [(2, 16, 4), (2, 2, 8), (1, 4, 10)])
def test_a_listing_is_split_between_batches_and_answered_whole(
    core: ServiceCore, workers: int, max_batch: int, photos: int
) -> None:
    """Two single-threaded workers embed one listing's photos side by side; a listing larger than the batch limit
    runs in batches of at most that limit. Either way: one answer, equal to the unbatched scan."""
    for i in range(4):
        core.writer.add_reference(PhotoInput(imaging.jpeg(600 + i)), "Acme", f"p{i}", "authentic")
    listing = [PhotoInput(imaging.jpeg(600 + i % 4)) for i in range(photos)]
    expected = core.pipeline.scan(listing, None, record=False).model_dump()
    settings = core.settings.updated(batch_max_wait_ms=0.0, batch_max_size=max_batch, inference_workers=workers)
    metrics = ServiceMetrics()
    with ScanBatcher(core.pipeline, settings, metrics) as batcher:
        got = batcher.submit(ScanRequest(listing, None, record=False)).result(timeout=30).model_dump()
        assert batcher.in_flight == 0
    value = metrics.registry.get_sample_value
    batches = value("counterfeit_scan_batch_photos_count", {})
    assert value("counterfeit_scan_batch_photos_sum", {}) == photos
    assert value("counterfeit_scan_batch_photos_bucket", {"le": f"{max_batch:.1f}"}) == batches  # none above the limit
    if workers == 1:  # the whole listing is queued at once: batches of the limit, then the rest
        assert batches == -(-photos // max_batch)
    else:  # each worker takes its share: at least two batches, whichever worker finishes first takes the rest
        assert batches is not None and batches >= 2
    assert [[m["image_id"] for m in image["matches"]] for image in got["images"]] == [
        [m["image_id"] for m in image["matches"]] for image in expected["images"]
    ]
    assert _close(stable(got), stable(expected))


def batcher_threads(core: ServiceCore, settings: Settings, read: Callable[[int], T]) -> dict[str, T]:
    """Run four scans through a batcher and apply `read` to the native id of each of its own threads while they
    still run (other tests' batchers may be winding down: only this one's threads), by thread name."""
    core.writer.add_reference(PhotoInput(imaging.jpeg(1)), "Acme", "p", "authentic")
    before = set(threading.enumerate())
    with ScanBatcher(core.pipeline, settings) as batcher:
        futures = [batcher.submit(ScanRequest([PhotoInput(imaging.jpeg(10 + i))], None, record=False)) for i in range(4)]
        assert all(future.result(timeout=30).model_dump()["images"] for future in futures)
        return {t.name: read(t.native_id) for t in set(threading.enumerate()) - before if t.native_id is not None}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is a Linux feature")
@pytest.mark.parametrize("nice", [0, 6])
def test_decoding_threads_run_below_the_model_by_decode_nice(core: ServiceCore, nice: int) -> None:
    settings = core.settings.updated(decode_nice=nice, decode_workers=2, inference_workers=1)
    base = os.getpriority(os.PRIO_PROCESS, 0)
    priority = batcher_threads(core, settings, lambda tid: os.getpriority(os.PRIO_PROCESS, tid))
    decoders = {value for name, value in priority.items() if name.startswith("scan-decode")}
    models = {value for name, value in priority.items() if name.startswith("scan-inference")}
    assert decoders == {min(19, base + nice)}
    assert models == {base}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread names in /proc are a Linux feature")
def test_batcher_threads_carry_their_names_at_the_os_level(core: ServiceCore) -> None:
    """top -H, ps -L and benchmarks/serve.py's CPU-by-thread profile read these names."""
    settings = core.settings.updated(decode_workers=2, inference_workers=2)
    comm = batcher_threads(core, settings, lambda tid: Path(f"/proc/self/task/{tid}/comm").read_text().strip())
    assert {name[:15] for name in comm} == set(comm.values())
    assert any(value.startswith("scan-inference") for value in comm.values())
    assert any(value.startswith("scan-decode") for value in comm.values())
    assert "scan-finish_0" in comm.values()
