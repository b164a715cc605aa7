"""Crash safety with real processes and real SIGKILLs: nothing acknowledged is lost, nothing half-written is visible.

- `counterfeit-scan serve` is killed while reference uploads and index saves (every 50 ms) are in flight, restarted on
  the same data directory, and checked: every acknowledged image is there and is its own top match, the index holds
  exactly the catalog, the index file loads, every blob under its final name is whole, SQLite's integrity check
  passes. Twice, at random moments (the seed is in the failure message).
- `counterfeit-scan catalog import` is killed mid-import and re-run: each image ends up in the catalog exactly once,
  the re-run counts the rows the killed run committed as duplicates, and the index agrees with the catalog.
- A restart after a crash never serves a deleted image's vector under the id of an image added after it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import httpx
import numpy as np
import pytest

from embeddings import VectorIndex
from reference_catalog import write_manifest
from service.config import Settings
from service.core import ServiceCore
from service.scanning.photo_prep import PhotoInput
from tests import imaging
from tests.helpers import TINY_MODEL_FLAGS, admin_token, tiny_settings
from tests.served import SCRIPT, START_TIMEOUT_S, Server, child_env, needs_console_script


@pytest.fixture(autouse=True)
def _needs_console_script() -> None:
    needs_console_script()


@pytest.fixture
def server(data_dir: Path, tmp_path: Path) -> Iterator[Server]:
    running = Server(data_dir, tmp_path / "serve.log")
    try:
        yield running
    finally:
        running.stop()


# --- what must hold of a data directory after a crash, before anything repairs it --------------------------------
def check_files_after_crash(data_dir: Path) -> None:
    """SQLite is intact, every index file loads, every blob under its final name is whole (a temp file may be left)."""
    with closing(sqlite3.connect(data_dir / "catalog.sqlite3")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        shas = {row[0] for row in db.execute("select sha256 from reference_images")}
    for path in (data_dir / "index").glob("*.faiss"):
        VectorIndex.load(path)  # raises if half-written
    blobs = {p.name: p for p in (data_dir / "blobs").glob("??/??/*") if p.is_file() and not p.name.endswith(".tmp")}
    for name, path in blobs.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == name, f"half-written blob visible: {path}"
    missing = shas - set(blobs)
    assert not missing, f"catalog rows whose image file is missing: {sorted(missing)[:5]}"


# --- the served state after a restart -------------------------------------------------------------------------------
def catalog_ids(client: httpx.Client) -> set[str]:
    ids: set[str] = set()
    offset = 0
    while True:
        page = client.get("/v1/catalog/images", params={"limit": 1000, "offset": offset}).json()
        ids.update(image["image_id"] for image in page["images"])
        offset += 1000
        if offset >= page["total"]:
            return ids


def check_served(client: httpx.Client, acked: dict[str, bytes], context: str) -> None:
    ids = catalog_ids(client)
    lost = set(acked) - ids
    assert not lost, f"{context}: {len(lost)} acknowledged images lost, e.g. {sorted(lost)[:3]}"
    for image_id in list(acked)[:20]:
        assert client.get(f"/v1/catalog/images/{image_id}").status_code == 200, context
    ready = client.get("/readyz").json()
    assert ready["index_size"] == len(ids), f"{context}: index holds {ready['index_size']}, catalog {len(ids)}"
    items = list(acked.items())
    for start in range(0, len(items), 10):  # a scan takes up to 10 photos
        chunk = items[start : start + 10]
        files = [("images", (f"{image_id}.jpg", data, "image/jpeg")) for image_id, data in chunk]
        response = client.post("/v1/scan", files=files)
        assert response.status_code == 200, f"{context}: {response.text}"
        for (image_id, _), photo in zip(chunk, response.json()["images"], strict=True):
            top = photo["matches"][0]
            assert (top["image_id"], top["similarity"] > 0.999) == (image_id, True), f"{context}: {top}"


def upload_until_killed(
    url: str, token: str, seeds: Iterator[int], acked: dict[str, bytes], problems: list[str], stop: threading.Event
) -> None:
    """Upload distinct photos until the server goes away; record each acknowledged (201) image id."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        while not stop.is_set():
            data = imaging.jpeg(next(seeds), (80, 80))
            try:
                response = client.post(
                    "/v1/catalog/images",
                    files={"file": ("ref.jpg", data, "image/jpeg")},
                    data={"brand": "Acme", "product": "runner", "label": "authentic"},
                )
            except httpx.TransportError:
                return  # killed mid-request: this upload was never acknowledged
            if response.status_code != 201:
                problems.append(f"upload answered {response.status_code}: {response.text[:300]}")
                return
            acked[response.json()["image_id"]] = data


def test_sigkill_during_uploads_and_index_saves_loses_nothing_acknowledged(server: Server, data_dir: Path) -> None:
    token = admin_token(tiny_settings(data_dir))
    seed = random.randrange(1_000_000)
    rng = random.Random(seed)
    seeds = itertools.count(10_000)  # shared by the upload threads: every photo is new (next() is atomic)
    acked: dict[str, bytes] = {}
    problems: list[str] = []
    server.start()
    for round_ in (1, 2):
        context = f"round {round_} (random seed {seed})"
        stop = threading.Event()
        uploaders = [
            threading.Thread(target=upload_until_killed, args=(server.url, token, seeds, acked, problems, stop)) for _ in range(2)
        ]
        before = len(acked)
        for thread in uploaders:
            thread.start()
        deadline = time.monotonic() + 30
        while len(acked) == before:  # kill only once this round has something to lose
            assert not problems and time.monotonic() < deadline, f"{context}: {problems}\n{server.log_tail()}"
            time.sleep(0.01)
        time.sleep(rng.uniform(0.2, 1.5))
        server.kill()
        stop.set()
        for thread in uploaders:
            thread.join(timeout=30)
        assert not problems, f"{context}: {problems}"
        leftovers = sorted(p.name for p in data_dir.rglob("*.tmp"))
        print(f"{context}: killed after {len(acked) - before} acknowledged uploads; temp files left: {leftovers}")
        check_files_after_crash(data_dir)
        server.start()
        assert "ignoring unreadable index file" not in server.log_tail(100_000), server.log_tail()
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
            check_served(client, acked, context)
            # At most the uploads in flight at the kill (one per thread) may have landed without an acknowledgement.
            assert len(catalog_ids(client) - set(acked)) <= len(uploaders) * round_, context
    with closing(sqlite3.connect(data_dir / "catalog.sqlite3")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# --- catalog import killed midway --------------------------------------------------------------------------------
IMPORT_ROWS = 160


def make_manifest(folder: Path, count: int) -> Path:
    (folder / "images").mkdir(parents=True)
    rows = []
    for i in range(count):
        relative = f"images/{i:04d}.jpg"
        (folder / relative).write_bytes(imaging.jpeg(50_000 + i, (128, 128)))
        rows.append((relative, "Acme", f"model-{i % 4}", "authentic" if i % 3 else "counterfeit", None, None))
    manifest = folder / "manifest.csv"
    write_manifest(manifest, rows)
    return manifest


def catalog_count(data_dir: Path) -> int:
    path = data_dir / "catalog.sqlite3"
    if not path.is_file():
        return 0
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)) as db:
            count: int = db.execute("select count(*) from reference_images").fetchone()[0]
            return count
    except sqlite3.OperationalError:  # schema not created yet, or busy
        return 0


def import_command(manifest: Path, data_dir: Path) -> list[str]:
    return [str(SCRIPT), "catalog", "import", str(manifest), "--data-dir", str(data_dir), *TINY_MODEL_FLAGS]


def test_sigkill_mid_import_then_rerun_imports_each_image_once(
    tmp_path: Path, data_dir: Path, make_core: Callable[[Settings], ServiceCore]
) -> None:
    manifest = make_manifest(tmp_path / "set", IMPORT_ROWS)
    with open(tmp_path / "import.log", "wb") as log:
        proc = subprocess.Popen(import_command(manifest, data_dir), stdout=log, stderr=subprocess.STDOUT, env=child_env())
    deadline = time.monotonic() + START_TIMEOUT_S
    while catalog_count(data_dir) == 0:  # the first batch of rows is committed
        assert proc.poll() is None, (tmp_path / "import.log").read_text()
        assert time.monotonic() < deadline, "import committed nothing"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    committed = catalog_count(data_dir)
    assert 0 < committed < IMPORT_ROWS, f"the kill did not land mid-import ({committed} of {IMPORT_ROWS} rows)"
    check_files_after_crash(data_dir)

    rerun = subprocess.run(import_command(manifest, data_dir), capture_output=True, env=child_env(), timeout=300, check=False)
    assert rerun.returncode == 0, rerun.stderr.decode(errors="replace")[-3000:]
    summary = json.loads(rerun.stdout)
    assert (summary["added"], summary["duplicates"], summary["errors"]) == (IMPORT_ROWS - committed, committed, [])

    with closing(sqlite3.connect(data_dir / "catalog.sqlite3")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows, distinct = db.execute("select count(*), count(distinct sha256) from reference_images").fetchone()
    assert rows == distinct == IMPORT_ROWS
    (saved,) = (VectorIndex.load(path) for path in (data_dir / "index").glob("*.faiss"))  # as the re-run left it
    core = make_core(tiny_settings(data_dir))
    keys = {ref.key for ref in core.catalog.all_images()}
    assert (set(saved.ids().tolist()), saved.revision) == (keys, core.catalog.revision())
    assert set(core.model.index.ids().tolist()) == keys and len(keys) == IMPORT_ROWS
    by_sha = {ref.sha256: ref.image_id for ref in core.catalog.all_images()}
    for i in random.Random(0).sample(range(IMPORT_ROWS), 8):
        data = (manifest.parent / f"images/{i:04d}.jpg").read_bytes()
        top = core.pipeline.scan([PhotoInput(data, content_type="image/jpeg")], record=False).model_dump()["images"][0][
            "matches"
        ][0]
        assert top["image_id"] == by_sha[hashlib.sha256(data).hexdigest()] and top["similarity"] > 0.999


# --- a key reused after a delete must not inherit the deleted image's vector ---------------------------------------
def test_restart_after_crash_does_not_serve_a_deleted_images_vector(
    make_core: Callable[[Settings], ServiceCore], settings: Settings
) -> None:
    """Delete the newest image, add another (SQLite may give it the freed integer key), crash before the index save.

    The saved index still holds the deleted image's vector under that key; the restart must not keep it for the
    new image (the id sets of index and catalog agree, so only the revision tells that the vector is stale).
    """
    first = make_core(settings)
    first.writer.add_reference(PhotoInput(imaging.jpeg(1), content_type="image/jpeg"), "Acme", "runner", "authentic")
    deleted = first.writer.add_reference(
        PhotoInput(imaging.jpeg(2), content_type="image/jpeg"), "Acme", "runner", "authentic"
    ).ref
    first.index_keeper.save()  # a periodic save
    first.writer.delete_reference(deleted.image_id)
    added = first.writer.add_reference(
        PhotoInput(imaging.jpeg(3), content_type="image/jpeg"), "Acme", "runner", "counterfeit"
    ).ref
    # crash: the process dies here, the index file still has the deleted image's vector
    restarted = make_core(settings)
    keys, vectors = restarted.catalog.stored_vectors(restarted.model.embedder.info.fingerprint, restarted.model.embedder.info.dim)
    for key, vector in zip(keys.tolist(), vectors, strict=True):
        np.testing.assert_allclose(restarted.model.index.reconstruct(key), vector, atol=1e-6, err_msg=f"stale vector, key {key}")
    answer = restarted.pipeline.scan([PhotoInput(imaging.jpeg(2), content_type="image/jpeg")], record=False).model_dump()
    assert all(m["image_id"] != added.image_id or m["similarity"] < 0.999 for m in answer["images"][0]["matches"])
    answer = restarted.pipeline.scan([PhotoInput(imaging.jpeg(3), content_type="image/jpeg")], record=False).model_dump()
    assert answer["images"][0]["matches"][0]["image_id"] == added.image_id
