"""Many scans while reference images are uploaded and deleted, over real HTTP (uvicorn in a thread).

Checked while it runs: every answer is 2xx (or an intended 404, or a 429 with Retry-After, which is retried), and no
read is stale once a write was acknowledged: a photo scanned after its upload's 201 is its own top match; an image
scanned for after its DELETE returned is never among the matches, and fetching it is 404. Scanner threads also check
the images other threads wrote. Afterwards the index holds exactly the catalog.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from service.app import create_app
from service.config import Settings
from service.core import ServiceCore
from tests import imaging
from tests.helpers import tiny_settings

WRITERS = 2
CYCLES_PER_WRITER = 12
SCANNERS = 3
STABLE_IMAGES = 6


class ThreadedServer:
    """The real app behind uvicorn on a loopback port, in a background thread of this process."""

    def __init__(self, app: FastAPI) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.socket.close()


@dataclass
class Ledger:
    """What the threads saw, shared between them: acknowledged writes, and anything that went wrong."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    live: dict[str, bytes] = field(default_factory=dict)  # acknowledged uploads not (yet) being deleted
    deleting: set[str] = field(default_factory=set)  # a DELETE was sent (acknowledged or not)
    deleted: dict[str, bytes] = field(default_factory=dict)  # the DELETE was acknowledged
    problems: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def problem(self, text: str) -> None:
        with self.lock:
            self.problems.append(text)

    def count(self, what: str) -> None:
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + 1


def call(ledger: Ledger, client: httpx.Client, method: str, url: str, expect: tuple[int, ...], **kwargs: Any) -> httpx.Response:
    """One request; a 429 (backpressure) is retried after its Retry-After, any other unexpected status is a problem."""
    for _ in range(50):
        response = client.request(method, url, **kwargs)
        if response.status_code != 429:
            break
        ledger.count("429 retried")
        assert "retry-after" in response.headers, "429 without Retry-After"
        time.sleep(min(float(response.headers["retry-after"]), 1.0))
    ledger.count(f"{method} {url.split('/')[2]} {response.status_code}")
    if response.status_code not in expect:
        ledger.problem(f"{method} {url} answered {response.status_code}: {response.text[:300]}")
    return response


def scan(ledger: Ledger, client: httpx.Client, photo: bytes, scoped: bool = False) -> list[dict[str, Any]]:
    form = {"brand": "Acme", "product": "runner"} if scoped else {}
    response = call(ledger, client, "POST", "/v1/scan", (200,), files=[("images", ("q.jpg", photo, "image/jpeg"))], data=form)
    matches: list[dict[str, Any]] = response.json()["images"][0]["matches"] if response.status_code == 200 else []
    return matches


def upload(ledger: Ledger, client: httpx.Client, photo: bytes, label: str) -> str | None:
    """Add a reference image; its id once acknowledged (201), else None (the problem is recorded)."""
    form = {"brand": "Acme", "product": "runner", "label": label}
    response = call(
        ledger, client, "POST", "/v1/catalog/images", (201,), files={"file": ("r.jpg", photo, "image/jpeg")}, data=form
    )
    return str(response.json()["image_id"]) if response.status_code == 201 else None


def is_top(matches: list[dict[str, Any]], image_id: str) -> bool:
    return bool(matches) and matches[0]["image_id"] == image_id and matches[0]["similarity"] > 0.999


def writer(ledger: Ledger, url: str, headers: dict[str, str], number: int, stop: threading.Event) -> None:
    """Upload a fresh photo, check it is found at once; delete some, check they are gone at once."""
    rng = random.Random(number)
    mine: list[str] = []
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        for cycle in range(CYCLES_PER_WRITER):
            if stop.is_set():
                return
            photo = imaging.jpeg(10_000 * (number + 1) + cycle, (80, 80))
            image_id = upload(ledger, client, photo, rng.choice(["authentic", "counterfeit"]))
            if image_id is None:
                continue
            if not is_top(scan(ledger, client, photo, scoped=cycle % 2 == 1), image_id):
                ledger.problem(f"stale read: {image_id} not the top match of its own photo right after its 201")
            with ledger.lock:
                ledger.live[image_id] = photo
            mine.append(image_id)
            if rng.random() < 0.5:
                victim = mine.pop(rng.randrange(len(mine)))
                with ledger.lock:
                    victim_photo = ledger.live.pop(victim)
                    ledger.deleting.add(victim)
                call(ledger, client, "DELETE", f"/v1/catalog/images/{victim}", (200,))
                with ledger.lock:
                    ledger.deleted[victim] = victim_photo
                for scoped in (False, True):
                    if any(m["image_id"] == victim for m in scan(ledger, client, victim_photo, scoped)):
                        ledger.problem(f"stale read: deleted {victim} still matched right after its DELETE returned")
                call(ledger, client, "GET", f"/v1/catalog/images/{victim}", (404,))  # intended 404s
                call(ledger, client, "DELETE", f"/v1/catalog/images/{victim}", (404,))


def scanner(
    ledger: Ledger, url: str, headers: dict[str, str], stable: dict[str, bytes], number: int, stop: threading.Event
) -> None:
    """Scan stable images and the other threads' writes; judge each answer by what was acknowledged before it."""
    rng = random.Random(1000 + number)
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        while not stop.is_set():
            kind = rng.choice(["stable", "live", "deleted"])
            with ledger.lock:
                pool = {"stable": stable, "live": ledger.live, "deleted": ledger.deleted}[kind]
                if not pool:
                    continue
                image_id = rng.choice(sorted(pool))
                photo = pool[image_id]
            matches = scan(ledger, client, photo, scoped=rng.random() < 0.5)
            with ledger.lock:
                delete_sent = image_id in ledger.deleting  # only a DELETE sent before the answer may hide an image
            if kind == "deleted" and any(m["image_id"] == image_id for m in matches):
                ledger.problem(f"stale read: {image_id} matched by a scan sent after its DELETE returned")
            elif kind != "deleted" and not delete_sent and not is_top(matches, image_id):
                ledger.problem(f"stale read: {kind} image {image_id} not its own top match: {matches[:2]}")


@pytest.fixture
def served(make_core: Callable[[Settings], ServiceCore], data_dir: Path) -> Iterator[tuple[ServiceCore, str, dict[str, str]]]:
    settings = tiny_settings(data_dir, index_save_interval_s=0.05)
    core = make_core(settings)
    _, token = core.keys.create("admin", [], "concurrency")
    with ThreadedServer(create_app(settings, core=core)) as server:
        yield core, server.url, {"Authorization": f"Bearer {token}"}


def test_scans_during_uploads_and_deletes_see_every_acknowledged_write(
    served: tuple[ServiceCore, str, dict[str, str]],
) -> None:
    core, url, headers = served
    ledger = Ledger()
    stable: dict[str, bytes] = {}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        for seed in range(STABLE_IMAGES):
            photo = imaging.jpeg(seed, (80, 80))
            image_id = upload(ledger, client, photo, "authentic")
            assert image_id is not None, ledger.problems
            stable[image_id] = photo
    stop = threading.Event()
    failures: list[BaseException] = []

    def guarded(target: Callable[..., None], *args: Any) -> Callable[[], None]:
        def run() -> None:
            try:
                target(*args)
            except BaseException as exc:  # surfaced below, with the thread's traceback chained
                failures.append(exc)
                stop.set()

        return run

    scanners = [threading.Thread(target=guarded(scanner, ledger, url, headers, stable, n, stop)) for n in range(SCANNERS)]
    writers = [threading.Thread(target=guarded(writer, ledger, url, headers, n, stop)) for n in range(WRITERS)]
    for thread in scanners + writers:
        thread.start()
    for thread in writers:
        thread.join(timeout=120)
    stop.set()
    for thread in scanners:
        thread.join(timeout=60)
    if failures:
        raise failures[0]
    print(f"requests by answer: {dict(sorted(ledger.counts.items()))}")
    assert not ledger.problems, f"{len(ledger.problems)} problems, e.g.:\n" + "\n".join(ledger.problems[:10])
    assert ledger.counts.get("POST scan 200", 0) > 3 * WRITERS * CYCLES_PER_WRITER, ledger.counts

    catalog = core.catalog.all_images()
    assert set(core.model.index.ids().tolist()) == {ref.key for ref in catalog}
    assert {ref.image_id for ref in catalog} == set(stable) | set(ledger.live)
    assert not set(ledger.deleted) & {ref.image_id for ref in catalog}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        assert client.get("/readyz").json()["index_size"] == len(catalog)
        assert client.get("/v1/catalog/images", params={"limit": 1000}).json()["total"] == len(catalog)
