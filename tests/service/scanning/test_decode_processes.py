"""Decoding in worker processes (`decode_processes`): the same answers as decoding in threads, bad photos refused with
the same errors, a worker that dies replaced while the service goes on, and the processes gone with the service."""

from __future__ import annotations

import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from benchmarks.serve import descendant_pids
from embeddings import ImageRejected
from service.core import ServiceCore
from service.errors import ServiceNotReady
from service.scanning.batching import ScanBatcher
from service.scanning.photo_prep import PhotoInput, ProcessPreparer, prepare_listing
from service.scanning.pipeline import ScanRequest
from tests import imaging
from tests.helpers import admin_token, tiny_settings
from tests.served import Server, needs_console_script, post_reference

VOLATILE = ("scan_id", "created_at")


def stable(result: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in result.items() if k not in VOLATILE}


def test_scans_decoded_in_processes_equal_scans_decoded_in_threads(core: ServiceCore) -> None:
    for i in range(4):
        core.writer.add_reference(PhotoInput(imaging.jpeg(400 + i)), "Acme", f"p{i}", "counterfeit" if i % 2 else "authentic")
    listings = [
        [PhotoInput(imaging.jpeg(400)), PhotoInput(imaging.png(401), "b.png", "image/png")],
        [PhotoInput(imaging.jpeg(402), "c.jpg", "image/jpeg")],
        [PhotoInput(imaging.jpeg(403)), PhotoInput(imaging.jpeg(404)), PhotoInput(imaging.jpeg(405))],
    ]
    results = {}
    for processes in (0, 2):
        settings = core.settings.updated(decode_processes=processes, decode_workers=0)
        with ScanBatcher(core.pipeline, settings) as batcher:
            assert (batcher.preparer is not None) is bool(processes)
            futures = [batcher.submit(ScanRequest(photos, record=False)) for photos in listings]
            results[processes] = [stable(future.result(timeout=60).model_dump()) for future in futures]
    assert results[2] == results[0]
    assert results[2][0]["images"][0]["matches"][0]["similarity"] > 0.999  # type: ignore[index]


def test_a_worker_that_dies_is_replaced_and_bad_photos_get_the_same_errors(core: ServiceCore) -> None:
    limits = core.settings.image_limits()
    spec = core.model.embedder.preprocess
    good = [PhotoInput(imaging.jpeg(7), "a.jpg", "image/jpeg")]
    preparer = ProcessPreparer(1, start_timeout_s=120)
    try:
        (pid,) = preparer.pids()
        assert pid != os.getpid()
        here = prepare_listing(good, limits, spec)[0]
        there = preparer.prepare(good, limits, spec)[0]
        assert (there.sha256, there.phash, there.spec) == (here.sha256, here.phash, here.spec)
        assert (there.pixels == here.pixels).all()

        for photos, status, words in [
            ([good[0], PhotoInput(b"not an image", "x.jpg")], 400, "photo 2 (x.jpg)"),
            ([PhotoInput(imaging.png(1), "y.png", "image/jpeg")], 415, "declared image/jpeg but the bytes are PNG"),
            ([PhotoInput(imaging.jpeg(1), "z.gif", "image/gif")], 415, "unsupported content type 'image/gif'"),
        ]:
            with pytest.raises(ImageRejected) as rejected:
                preparer.prepare(photos, limits, spec)
            assert rejected.value.status == status
            assert words in str(rejected.value)

        os.kill(pid, signal.SIGKILL)  # as the kernel's OOM killer, or a crash in a decoder, would
        deadline = time.monotonic() + 10
        while not preparer._workers[0].process.exitcode and time.monotonic() < deadline:
            time.sleep(0.01)
        preparer.start_timeout_s = 0  # the replacement cannot start in time: the worker's place must not be lost
        with pytest.raises(ServiceNotReady, match="did not start"):
            preparer.prepare(good, limits, spec)
        assert preparer.pids() == [pid]
        preparer.start_timeout_s = 120
        # a lost place would leave this waiting for an idle worker for ever
        with ThreadPoolExecutor(1) as pool, pytest.raises(ServiceNotReady, match="decoding process stopped"):
            pool.submit(preparer.prepare, good, limits, spec).result(timeout=60)
        (new_pid,) = preparer.pids()
        assert new_pid != pid
        assert preparer.prepare(good, limits, spec)[0].sha256 == here.sha256
        workers = list(preparer._workers)
    finally:
        preparer.close()
    assert workers and not any(worker.process.is_alive() for worker in workers)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the decoding processes in /proc")
def test_serve_with_decoding_processes_scans_refuses_bad_photos_and_takes_them_down(data_dir: Path, tmp_path: Path) -> None:
    needs_console_script()
    token = admin_token(tiny_settings(data_dir))
    server = Server(data_dir, tmp_path / "serve.log", "--decode-processes", "2")
    try:
        server.start()  # ready: the decoding processes are up, not started by the first scan
        assert server.proc is not None
        children = descendant_pids(server.proc.pid)
        # the fork server and the two decoders forked from it (and multiprocessing's resource tracker)
        assert len([pid for pid in children if is_decoder(pid)]) == 3, children
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
            image_id = post_reference(client, imaging.jpeg(3))
            photos = [("images", ("a.jpg", imaging.jpeg(3), "image/jpeg")), ("images", ("b.png", imaging.png(4), "image/png"))]
            scanned = client.post("/v1/scan", files=photos)
            assert scanned.status_code == 200, scanned.text
            assert scanned.json()["images"][0]["matches"][0]["image_id"] == image_id
            bad = client.post("/v1/scan", files=[("images", ("a.jpg", b"not an image", "image/jpeg"))])
            assert bad.status_code == 400
            assert "photo 1 (a.jpg)" in bad.json()["detail"]
            assert client.get("/readyz").status_code == 200
    finally:
        server.stop()
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() and not zombie(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists() and not zombie(pid)], "decoders outlived the service"


def is_decoder(pid: int) -> bool:
    try:
        return b"multiprocessing.forkserver" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def zombie(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) == "Z"
    except OSError:
        return False
