"""Two `counterfeit-scan serve` processes on one PostgreSQL database and one data directory, as two replicas behind a
load balancer: what one of them is told, the other serves.

- A reference image uploaded to one replica is found by a scan on the other within a second or so (the change feed,
  followed every `index_save_interval_s`, here 0.5 s); its relabel and its deletion follow the same way, and the
  other replica never re-reads the whole catalog to get there.
- A model activated over one replica's admin API is served by the other (the shared model registry).
- The replica running a bulk import is killed (SIGKILL) mid-way: the other takes the job over once its lease runs out
  (`import_lease_s`, here 2 s) and finishes it, every image imported once, every one searchable.

Replica b keeps its index files in a folder of its own (`index_dir`); a shares the data directory's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from embeddings import ModelSpec
from embeddings.loading import load_visual, save_checkpoint
from tests import imaging
from tests.archives import zip_bytes
from tests.helpers import admin_token, tiny_settings
from tests.postgres import PostgresServer
from tests.served import Server, needs_console_script, post_reference

VISIBLE_WITHIN_S = 10.0
IMPORT_IMAGES = 200
SETTINGS = {"index_save_interval_s": "0.5", "import_lease_s": "2", "import_chunk_rows": "4"}


@dataclass
class Replica:
    name: str
    server: Server
    client: httpx.Client

    def log_text(self) -> str:
        return self.server.log_path.read_text(errors="replace") if self.server.log_path.is_file() else ""


@dataclass
class Replicas:
    a: Replica
    b: Replica
    database_url: str
    token: str
    folder: Path


@pytest.fixture(scope="module")
def replicas(postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    needs_console_script()
    folder = tmp_path_factory.mktemp("replicas")
    data_dir = folder / "data"
    url = postgres_server.create_database()
    token = admin_token(tiny_settings(data_dir, database_url=url))  # migrates the database, as `db upgrade` would
    servers = {
        "a": Server(data_dir, folder / "a.log", database_url=url, **SETTINGS),
        "b": Server(data_dir, folder / "b.log", database_url=url, index_dir=str(folder / "b-index"), **SETTINGS),
    }
    errors: list[BaseException] = []

    def start(server: Server) -> None:
        try:
            server.start()
        except BaseException as exc:  # reported below
            errors.append(exc)

    starting = [threading.Thread(target=start, args=(server,)) for server in servers.values()]
    for thread in starting:
        thread.start()
    for thread in starting:
        thread.join()
    headers = {"Authorization": f"Bearer {token}"}
    clients = {name: httpx.Client(base_url=server.url, headers=headers, timeout=30) for name, server in servers.items()}
    try:
        assert not errors, errors
        yield Replicas(Replica("a", servers["a"], clients["a"]), Replica("b", servers["b"], clients["b"]), url, token, folder)
    finally:
        for name, server in servers.items():
            clients[name].close()
            server.stop()
        postgres_server.drop_database(url)


def wait_for(what: str, predicate: Callable[[], bool], seconds: float = VISIBLE_WITHIN_S, *logs: Replica) -> float:
    """Poll until `predicate` holds; the seconds it took."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > seconds:
            tails = "\n".join(f"--- {replica.name} ---\n{replica.log_text()[-3000:]}" for replica in logs)
            pytest.fail(f"{what}: not within {seconds} s\n{tails}")
        time.sleep(0.05)
    return time.monotonic() - started


def matches(replica: Replica, data: bytes) -> list[dict[str, Any]]:
    response = replica.client.post("/v1/scan", files=[("images", ("q.jpg", data, "image/jpeg"))])
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["images"][0]["matches"]
    return found


def top_is(replica: Replica, data: bytes, image_id: str, label: str | None = None) -> bool:
    found = matches(replica, data)
    return bool(found) and found[0]["image_id"] == image_id and (label is None or found[0]["label"] == label)


def test_writes_on_one_replica_are_searchable_on_the_other(replicas: Replicas) -> None:
    a, b = replicas.a, replicas.b
    data = imaging.jpeg(501)
    image_id = post_reference(a.client, data, product="replicated")
    assert top_is(a, data, image_id)  # searchable on the replica that wrote it when the call returns
    added = wait_for("a's upload found by a scan on b", lambda: top_is(b, data, image_id), VISIBLE_WITHIN_S, a, b)

    relabel = a.client.patch(f"/v1/catalog/images/{image_id}", json={"label": "counterfeit"})
    assert relabel.status_code == 200, relabel.text
    relabelled = wait_for("a's relabel seen on b", lambda: top_is(b, data, image_id, "counterfeit"), VISIBLE_WITHIN_S, a, b)

    assert a.client.delete(f"/v1/catalog/images/{image_id}").status_code == 200
    gone = wait_for(
        "a's deletion seen on b",
        lambda: image_id not in {m["image_id"] for m in matches(b, data)},
        VISIBLE_WITHIN_S,
        a,
        b,
    )

    other = imaging.jpeg(502)
    back = post_reference(b.client, other, product="replicated")  # and the other way round
    wait_for("b's upload found by a scan on a", lambda: top_is(a, other, back), VISIBLE_WITHIN_S, a, b)
    print(f"seen on the other replica after: add {added:.2f} s, relabel {relabelled:.2f} s, delete {gone:.2f} s")
    for replica in (a, b):
        log = replica.log_text()
        assert "followed the catalog from revision" in log, log[-3000:]
        assert "reading the whole catalog again" not in log, log[-3000:]
    assert not list(replicas.folder.joinpath("data", "index").glob("*.tmp"))
    assert list(replicas.folder.joinpath("b-index").glob("*.faiss"))  # b saves its index in its own folder


def test_a_model_activated_on_one_replica_is_served_by_the_other(replicas: Replicas, tmp_path: Path) -> None:
    a, b = replicas.a, replicas.b
    data = imaging.jpeg(601)
    image_id = post_reference(a.client, data, product="model-switch")
    wait_for("the upload on b", lambda: top_is(b, data, image_id), VISIBLE_WITHIN_S, a, b)
    before = b.client.get("/v1/admin/model").json()["serving"]["fingerprint"]
    checkpoint = tmp_path / "other.pt"
    seed = int(time.time()) % 1000 + 1  # other weights than any model served before in this module
    loaded = load_visual(ModelSpec(name="cs-tiny-vit", pretrained=None, allow_random_weights=True, seed=seed))
    save_checkpoint(checkpoint, "cs-tiny-vit", loaded, {"note": "replicas test"})

    accepted = a.client.post("/v1/admin/model/activate", json={"checkpoint": str(checkpoint)})
    assert accepted.status_code == 202, accepted.text
    wait_for("a's switch", lambda: a.client.get("/v1/admin/model").json()["switch"]["state"] != "preparing", 60, a)
    status = a.client.get("/v1/admin/model").json()
    assert status["switch"]["state"] == "done", status["switch"]
    new = status["serving"]["fingerprint"]
    assert new != before
    took = wait_for(
        "b serving the model a activated",
        lambda: b.client.get("/v1/admin/model").json()["serving"]["fingerprint"] == new,
        60,
        a,
        b,
    )
    print(f"b served the model activated on a after {took:.2f} s")
    response = b.client.post("/v1/scan", files=[("images", ("q.jpg", data, "image/jpeg"))])
    assert response.json()["model"]["fingerprint"] == new
    assert response.json()["images"][0]["matches"][0]["image_id"] == image_id  # b's index is the new model's
    assert b.client.get("/v1/admin/model").json()["active"]["fingerprint"] == new


def test_an_import_whose_replica_is_killed_is_finished_by_the_other(replicas: Replicas) -> None:
    photos = [imaging.jpeg(10_000 + i, (128, 128)) for i in range(IMPORT_IMAGES)]
    archive = zip_bytes((f"Acme/bulk/authentic/{i:04d}.jpg", data) for i, data in enumerate(photos))
    submitted = replicas.a.client.post("/v1/catalog/imports", files={"archive": ("bulk.zip", archive, "application/zip")})
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["job_id"]
    engine = create_engine(replicas.database_url)
    try:

        def holder() -> str | None:
            with engine.connect() as connection:
                row = connection.execute(
                    text("SELECT claimed_by, rows_done FROM catalog_import_jobs WHERE job_id = :job"), {"job": job_id}
                ).one()
            return str(row[0]) if row[0] and row[1] else None  # claimed, and a first chunk in

        wait_for("the import under way", lambda: holder() is not None, 30, replicas.a, replicas.b)
        claim = holder()
        assert claim is not None
        running, other = (replicas.a, replicas.b) if f":{replicas.a.server.proc.pid}:" in claim else (replicas.b, replicas.a)  # type: ignore[union-attr]
        assert f":{running.server.proc.pid}:" in claim, claim  # type: ignore[union-attr]
        running.server.kill()
        try:
            killed_at = other.client.get(f"/v1/catalog/imports/{job_id}").json()
            assert killed_at["state"] == "running" and killed_at["rows_done"] < IMPORT_IMAGES, killed_at
            took = wait_for(
                f"the job taken over and finished by {other.name}",
                lambda: other.client.get(f"/v1/catalog/imports/{job_id}").json()["state"] not in ("queued", "running"),
                60,
                other,
            )
            job = other.client.get(f"/v1/catalog/imports/{job_id}").json()
            print(f"{running.name} killed at {killed_at['rows_done']} rows; {other.name} finished {took:.1f} s later: {job}")
            assert job["state"] == "succeeded", job
            assert (job["rows_done"], job["error_count"]) == (IMPORT_IMAGES, 0)
            assert job["images_added"] + job["duplicates_skipped"] == IMPORT_IMAGES
            listed = other.client.get("/v1/catalog/images", params={"product": "bulk", "limit": 1}).json()
            assert listed["total"] == IMPORT_IMAGES  # each image once
            for i in (0, IMPORT_IMAGES // 2, IMPORT_IMAGES - 1):
                found = matches(other, photos[i])
                assert found and found[0]["similarity"] > 0.999 and found[0]["product"] == "bulk"
        finally:
            running.server.start()  # the module's other tests expect both replicas
            running.client.base_url = httpx.URL(running.server.url)  # on a new port
        wait_for(
            f"{running.name} back with the whole import",
            lambda: top_is(running, photos[-1], matches(other, photos[-1])[0]["image_id"]),
            VISIBLE_WITHIN_S,
            running,
        )
    finally:
        engine.dispose()
