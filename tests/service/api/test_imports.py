"""POST /v1/catalog/imports over the real app: folder and manifest archives, bad rows, malformed archives that write
nothing, brand scoping, jobs that survive a restart, and a handful of real sneaker photos."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.access.api_keys import Principal
from service.app import create_app
from service.catalog.writer import ImportRow
from service.config import Settings
from service.core import ServiceCore
from service.imports.job_store import ImportJobStore, Progress
from service.imports.jobs import ImportJobs
from service.scanning.photo_prep import PhotoInput
from tests import imaging
from tests.archives import gzip_bytes, manifest, tar_gz_bytes, zip_bytes
from tests.helpers import pick_sneakers, scan, sha256, stored_state, tiny_settings
from tests.service.api.imports_helpers import (
    catalog_revision,
    catalog_rows,
    folder_members,
    import_archive,
    leftovers,
    photos,
    submit,
    wait_for,
)

ADMIN_JOB_KEYS = {"job_id", "state", "rows_total", "rows_done", "images_added", "duplicates_skipped", "errors", "failure"}


@pytest.fixture
def settings(data_dir: Path, database_url: str | None) -> Settings:
    return tiny_settings(data_dir, database_url=database_url, import_chunk_rows=2)


@pytest.mark.both_databases
def test_folder_layout_zip_is_imported_in_the_background(settings: Settings, client: TestClient, data_dir: Path) -> None:
    authentic, fakes = photos(3), photos(2, start=10)
    members = folder_members("Acme", "runner", "authentic", authentic) + folder_members("Acme", "runner", "counterfeit", fakes)
    response = client.post("/v1/catalog/imports", files={"archive": ("acme.zip", zip_bytes(members), "application/zip")})
    assert response.status_code == 202, response.text
    queued = response.json()
    assert set(queued) >= ADMIN_JOB_KEYS
    assert queued["state"] == "queued" and queued["format"] == "zip" and queued["filename"] == "acme.zip"
    assert response.headers["location"] == f"/v1/catalog/imports/{queued['job_id']}"

    job = wait_for(client, queued["job_id"])
    assert job["state"] == "succeeded", job
    assert (job["layout"], job["rows_total"], job["rows_done"]) == ("folders", 5, 5)
    assert (job["images_added"], job["duplicates_skipped"], job["errors"], job["failure"]) == (5, 0, [], None)
    assert job["started_at"] and job["finished_at"] and job["created_at"] <= job["finished_at"]
    expected = {("Acme", "runner", "authentic", sha256(d)) for d in authentic}
    expected |= {("Acme", "runner", "counterfeit", sha256(d)) for d in fakes}
    assert {row[:4] for row in catalog_rows(settings)} == expected
    assert "Acme/runner/counterfeit/p1.png" in {row[4] for row in catalog_rows(settings)}  # source: the path
    assert leftovers(data_dir) == []  # the archive and its work folder are gone

    top = scan(client, [fakes[0]])["images"][0]["matches"][0]  # searchable, with its label
    assert (top["label"], top["similarity"] > 0.999) == ("counterfeit", True)

    again = import_archive(client, zip_bytes(members))  # nothing is imported twice
    assert (again["state"], again["images_added"], again["duplicates_skipped"]) == ("succeeded", 0, 5)
    assert len(catalog_rows(settings)) == 5


@pytest.mark.both_databases
def test_manifest_tar_gz_reports_bad_rows_and_imports_the_good_ones(
    settings: Settings, client: TestClient, data_dir: Path
) -> None:
    good = photos(3)
    rows = [
        ("images/a.jpg", "Acme", "runner", "authentic", "reference", "shoot 1"),  # line 2
        ("images/b.png", "Acme", "runner", "counterfeit", "reference", ""),  # 3
        ("images/c.webp", "Acme", "trail", "authentic", "query", ""),  # 4: another split, still imported (no split asked)
        ("images/a.jpg", "Acme", "runner", "authentic", "reference", ""),  # 5: the same image again
        ("images/a.jpg", "Acme", "runner", "counterfeit", "reference", ""),  # 6: the same image, the other label
        ("images/missing.jpg", "Acme", "runner", "authentic", "reference", ""),  # 7
        ("images/a.jpg", "Acme", "runner", "fake-ish", "reference", ""),  # 8: unknown label
        ("../outside.jpg", "Acme", "runner", "authentic", "reference", ""),  # 9: escapes the archive
        ("/etc/passwd", "Acme", "runner", "authentic", "reference", ""),  # 10: absolute
        ("notes.txt", "Acme", "runner", "authentic", "reference", ""),  # 11: not an image
        ("images/inner.jpg", "Acme", "runner", "authentic", "reference", ""),  # 12: a nested archive
        ("images/broken.jpg", "Acme", "runner", "authentic", "reference", ""),  # 13: truncated JPEG
        ("images/a.jpg", "", "runner", "authentic", "reference", ""),  # 14: no brand
    ]
    members = [
        ("manifest.csv", manifest(rows, ("path", "brand", "product", "label", "split", "source"))),
        ("images/a.jpg", good[0]),
        ("images/b.png", good[1]),
        ("images/c.webp", good[2]),
        ("notes.txt", b"just some notes\n"),
        ("images/inner.jpg", zip_bytes([("x.jpg", good[0])])),
        ("images/broken.jpg", imaging.truncated_jpeg(5)),
    ]
    job = import_archive(client, tar_gz_bytes(members), "catalog.tgz")
    assert job["state"] == "succeeded", job
    assert (job["format"], job["layout"], job["rows_total"], job["rows_done"]) == ("tar.gz", "manifest", 13, 13)
    assert (job["images_added"], job["duplicates_skipped"], job["error_count"]) == (3, 1, 9)
    reasons = {error["row"]: error["reason"] for error in job["errors"]}
    assert sorted(reasons) == [6, 7, 8, 9, 10, 11, 12, 13, 14]
    assert "already in the catalog as authentic" in reasons[6] or "listed earlier as authentic" in reasons[6]
    assert "no such file" in reasons[7]
    assert "unknown label" in reasons[8]
    assert "escapes" in reasons[9]
    assert "absolute" in reasons[10]
    assert "not a decodable image" in reasons[11]
    assert "nested zip archive" in reasons[12]
    assert "corrupt or truncated" in reasons[13]
    assert "empty brand" in reasons[14]
    paths = {e["path"] for e in job["errors"] if e["row"] in (7, 11, 12)}
    assert paths == {"images/missing.jpg", "notes.txt", "images/inner.jpg"}
    rows_stored = catalog_rows(settings)
    assert {(r[1], r[2], r[3]) for r in rows_stored} == {
        ("runner", "authentic", sha256(good[0])),
        ("runner", "counterfeit", sha256(good[1])),
        ("trail", "authentic", sha256(good[2])),
    }
    assert {r[4] for r in rows_stored} == {"shoot 1", None}  # the source column (empty: none)


@pytest.mark.both_databases
def test_split_keeps_only_that_split(settings: Settings, client: TestClient, data_dir: Path) -> None:
    images = photos(3)
    rows = [(f"{i}.jpg", "Acme", "runner", "authentic", split) for i, split in enumerate(("reference", "query", "reference"))]
    archive = zip_bytes([("manifest.csv", manifest(rows, ("path", "brand", "product", "label", "split")))] + [
        (f"{i}.jpg", data) for i, data in enumerate(images)
    ])  # fmt: skip
    job = import_archive(client, archive, split="reference")
    assert (job["state"], job["split"], job["rows_total"], job["images_added"]) == ("succeeded", "reference", 2, 2)
    assert {(r[3], r[4]) for r in catalog_rows(settings)} == {(sha256(images[0]), "0.jpg"), (sha256(images[2]), "2.jpg")}


@pytest.mark.both_databases
def test_a_zipped_folder_and_os_clutter_are_understood(client: TestClient, data_dir: Path) -> None:
    images = photos(2)
    members = [(f"export/{path}", data) for path, data in folder_members("Acme", "runner", "authentic", images)]
    members += [("export/.DS_Store", b"\0\0"), ("__MACOSX/export/._p0.jpg", b"\0\0")]
    job = import_archive(client, zip_bytes(members))
    assert (job["state"], job["images_added"], job["errors"]) == ("succeeded", 2, [])


@pytest.mark.both_databases
def test_non_image_members_are_reported_not_fatal(settings: Settings, client: TestClient, data_dir: Path) -> None:
    images = photos(2)
    members = [
        *folder_members("Acme", "runner", "authentic", images),
        ("README.md", b"# our catalog\n"),
        ("Acme/runner/authentic/notes.txt", b"shot on a Tuesday\n"),
        ("Acme/runner/authentic/more.zip", zip_bytes([("x.jpg", images[0])])),
        ("Acme/runner/authentic/hidden.jpg", tar_gz_bytes([("x.jpg", images[0])])),
        ("Acme/runner/fakes/x.jpg", imaging.jpeg(50)),
        ("Acme/runner/authentic/document.jpg", b"%PDF-1.4 not really a photo"),
    ]
    job = import_archive(client, zip_bytes(members))
    assert (job["state"], job["images_added"], job["rows_total"], job["error_count"]) == ("succeeded", 2, 8, 6)
    reasons = {error["path"]: error["reason"] for error in job["errors"]}
    assert all(error["row"] is None for error in job["errors"])
    assert "not in the layout" in reasons["README.md"]
    assert "not an image file" in reasons["Acme/runner/authentic/notes.txt"]
    assert "not an image file" in reasons["Acme/runner/authentic/more.zip"]
    assert "nested gzip archive" in reasons["Acme/runner/authentic/hidden.jpg"]
    assert "folder 'fakes' is not a label" in reasons["Acme/runner/fakes/x.jpg"]
    assert "not a decodable image" in reasons["Acme/runner/authentic/document.jpg"]
    assert len(catalog_rows(settings)) == 2


MALFORMED: dict[str, tuple[bytes, str, dict[str, str]]] = {
    "corrupt zip": (b"PK\x03\x04" + b"\x00garbage" * 50, "zip archive is corrupt", {}),
    "truncated zip": (zip_bytes(folder_members("Acme", "r", "authentic", photos(2)))[:-200], "zip archive is corrupt", {}),
    "gzip of a CSV": (gzip_bytes(b"path,brand\nx,y\n" * 40), "not a tar archive", {}),
    "truncated tar.gz": (tar_gz_bytes(folder_members("Acme", "r", "authentic", photos(2)))[:-300], "corrupt", {}),
    "empty zip": (zip_bytes([]), "holds no files", {}),
    "photos without layout": (zip_bytes([("a.jpg", imaging.jpeg(1)), ("b.jpg", imaging.jpeg(2))]), "no manifest.csv", {}),
    "manifest lacking columns": (
        zip_bytes([("manifest.csv", manifest([("a.jpg", "Acme")], ("path", "brand"))), ("a.jpg", imaging.jpeg(1))]),
        "lacks column(s) product, label",
        {},
    ),
    "manifest not utf-8": (zip_bytes([("manifest.csv", b"path,brand,product,label\n\xff\xfe,x,y,z\n")]), "not a readable", {}),
    "split without a split column": (
        zip_bytes([("manifest.csv", manifest([("a.jpg", "Acme", "r", "authentic")])), ("a.jpg", imaging.jpeg(1))]),
        "has no 'split' column",
        {"split": "reference"},
    ),
    "split with folders": (zip_bytes(folder_members("Acme", "r", "authentic", photos(1))), "no manifest.csv", {"split": "x"}),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_archive_fails_the_job_and_writes_nothing(
    settings: Settings, client: TestClient, data_dir: Path, case: str
) -> None:
    archive, reason, form = MALFORMED[case]
    import_archive(client, zip_bytes(folder_members("Acme", "runner", "authentic", photos(2, start=90))))
    before, revision = stored_state(client, settings), catalog_revision(settings)
    job = import_archive(client, archive, **form)
    assert job["state"] == "failed", job
    assert reason in job["failure"], job["failure"]
    assert (job["images_added"], job["rows_done"]) == (0, 0)
    assert stored_state(client, settings) == before
    assert catalog_revision(settings) == revision
    assert leftovers(data_dir) == []


@pytest.mark.parametrize(
    ("data", "status", "detail"),
    [
        (b"", 400, "empty"),
        (imaging.png(1), 415, "not a zip or tar.gz archive"),
        (b"Rar!\x1a\x07\x00" + b"\x00" * 100, 415, "not a zip or tar.gz archive"),
        (b"just text, named .zip", 415, "first bytes"),
    ],
)
def test_what_is_plainly_not_an_archive_is_refused_at_once(
    client: TestClient, data_dir: Path, data: bytes, status: int, detail: str
) -> None:
    response = client.post("/v1/catalog/imports", files={"archive": ("catalog.zip", data, "application/zip")})
    assert response.status_code == status, response.text
    assert detail in response.json()["detail"]
    assert client.get("/v1/catalog/imports").json()["jobs"] == []
    assert leftovers(data_dir) == []


def test_missing_archive_field_is_422(client: TestClient) -> None:
    assert client.post("/v1/catalog/imports", data={"split": "x"}).status_code == 422


# --- who may import what, and see which jobs ---------------------------------------------------------------------------
@pytest.mark.both_databases
def test_brand_keys_import_into_their_own_brands_only_and_see_their_own_jobs(
    settings: Settings, client: TestClient, core: ServiceCore, data_dir: Path
) -> None:
    acme_key, acme = core.keys.create("brand", ["Acme"], "acme team")
    _, other_acme = core.keys.create("brand", ["Acme"], "another acme key")
    _, scanner = core.keys.create("scanner", [], "pipeline")
    mine, theirs = photos(2), photos(2, start=20)
    members = folder_members("Acme", "runner", "authentic", mine) + folder_members("Globex", "boot", "authentic", theirs)
    job = wait_for(client, submit(client, zip_bytes(members), token=acme)["job_id"], token=acme)
    assert (job["state"], job["images_added"], job["error_count"], job["created_by"]) == ("succeeded", 2, 2, acme_key["key_id"])
    assert all("forbidden: this key may not import into brand 'Globex'" in e["reason"] for e in job["errors"])
    assert {r[0] for r in catalog_rows(settings)} == {"Acme"}

    rows = [("a.jpg", "Globex", "boot", "authentic"), ("b.jpg", "Acme", "runner", "counterfeit")]
    archive = zip_bytes([("manifest.csv", manifest(rows)), ("a.jpg", theirs[0]), ("b.jpg", imaging.jpeg(70))])
    by_manifest = wait_for(client, submit(client, archive, token=acme)["job_id"], token=acme)
    assert (by_manifest["images_added"], [e["row"] for e in by_manifest["errors"]]) == (1, [2])
    assert "forbidden" in by_manifest["errors"][0]["reason"]

    admin_job = import_archive(client, zip_bytes(folder_members("Globex", "boot", "authentic", theirs)))
    assert admin_job["images_added"] == 2
    other = client.get(f"/v1/catalog/imports/{admin_job['job_id']}", headers={"Authorization": f"Bearer {acme}"})
    assert other.status_code == 404  # another key's job answers like one that does not exist
    assert client.get("/v1/catalog/imports/imp_nope", headers={"Authorization": f"Bearer {acme}"}).status_code == 404
    listed = client.get("/v1/catalog/imports", headers={"Authorization": f"Bearer {acme}"}).json()["jobs"]
    assert [j["job_id"] for j in listed] == [by_manifest["job_id"], job["job_id"]]  # newest first
    assert client.get("/v1/catalog/imports", headers={"Authorization": f"Bearer {other_acme}"}).json()["jobs"] == []
    everything = client.get("/v1/catalog/imports").json()["jobs"]
    assert [j["job_id"] for j in everything] == [admin_job["job_id"], by_manifest["job_id"], job["job_id"]]
    assert len(client.get("/v1/catalog/imports?limit=1").json()["jobs"]) == 1

    refused = submit(client, zip_bytes(members), token=scanner, expect=403)
    assert "scanner key may not" in refused["detail"]
    assert client.get("/v1/catalog/imports", headers={"Authorization": f"Bearer {scanner}"}).status_code == 403
    assert client.get("/v1/catalog/imports", headers={"Authorization": "Bearer cs_key_0_bad"}).status_code == 401

    audit = client.get(f"/v1/audit?actor={acme_key['key_id']}").json()
    actions = [entry["action"] for entry in audit["entries"]]
    assert actions.count("catalog.import.submit") == 2 and actions.count("catalog.import.finish") == 2
    assert actions.count("catalog.add") == 3


# --- restarts ---------------------------------------------------------------------------------------------------------
@pytest.mark.both_databases
def test_a_job_queued_before_a_stop_runs_at_the_next_start(
    make_client: Callable[..., TestClient], make_core: Callable[[Settings], ServiceCore], settings: Settings
) -> None:
    core = make_core(settings)
    images = photos(5)
    not_started = ImportJobs(settings, lambda: core)  # a service that accepted the upload and stopped at once
    archive = zip_bytes(folder_members("Acme", "runner", "authentic", images))
    key, _ = core.keys.create("admin", [], "importer")  # a job acts for a key that exists and is not revoked
    queued = not_started.submit(archive, Principal(key["key_id"], "admin", frozenset()))
    assert queued["state"] == "queued"
    assert leftovers(settings.storage.data_dir, settle_s=0) == [f"{queued['job_id']}.archive"]

    client = make_client(settings, core)  # the next start picks it up
    job = wait_for(client, queued["job_id"])
    assert (job["state"], job["images_added"], job["rows_done"], job["rows_total"]) == ("succeeded", 5, 5, 5)
    assert leftovers(settings.storage.data_dir) == []


@pytest.mark.both_databases
def test_a_job_interrupted_mid_way_resumes_without_importing_anything_twice(
    make_client: Callable[..., TestClient], make_core: Callable[[Settings], ServiceCore], settings: Settings
) -> None:
    core = make_core(settings)
    images = photos(6)
    members = folder_members("Acme", "runner", "authentic", images)
    interrupted = ImportJobs(settings, lambda: core)
    key, _ = core.keys.create("admin", [], "importer")
    job_id = interrupted.submit(zip_bytes(members), Principal(key["key_id"], "admin", frozenset()))["job_id"]
    # What a crash leaves: rows 0-2 committed to the catalog, but the last checkpoint says 2 rows done.
    rows = [
        ImportRow(str(i), PhotoInput(data), "Acme", "runner", "authentic", path) for i, (path, data) in enumerate(members[:3])
    ]
    assert core.writer.import_rows(rows).added == 3
    store, crashed, lease_s = ImportJobStore(core.database), "crashed-process", 0.01  # its lease runs out at once
    assert store.claim(crashed, lease_s) == job_id
    store.start(job_id, crashed, lease_s)
    store.planned(job_id, crashed, lease_s, "folders", 6, [])
    store.advance(job_id, crashed, lease_s, Progress(rows=2, position=2, added=2, duplicates=0, errors=[]))

    client = make_client(settings, core)
    job = wait_for(client, job_id)
    assert job["state"] == "succeeded", job
    assert (job["rows_done"], job["rows_total"], job["images_added"], job["duplicates_skipped"]) == (6, 6, 5, 1)
    stored = catalog_rows(settings)
    assert sorted(r[3] for r in stored) == sorted(sha256(d) for d in images)  # each image exactly once
    assert client.get("/readyz").json()["index_size"] == 6
    assert leftovers(settings.storage.data_dir) == []


@pytest.mark.both_databases
def test_a_restarted_service_finishes_what_a_stopped_one_began(
    make_client: Callable[..., TestClient], make_core: Callable[[Settings], ServiceCore], data_dir: Path, database_url: str | None
) -> None:
    settings = tiny_settings(data_dir, database_url=database_url, import_chunk_rows=1)
    images = photos(12)
    core = make_core(settings)
    _, token = core.keys.create("admin", [], "tests")
    with TestClient(create_app(settings, core=core)) as first:
        job_id = submit(first, zip_bytes(folder_members("Acme", "runner", "authentic", images)), token=token)["job_id"]
    # the app stopped whatever the job's progress: after the chunk in flight, leaving the job to the next start

    second = make_client(settings, make_core(settings))
    job = wait_for(second, job_id)
    assert (job["state"], job["rows_done"], job["images_added"] + job["duplicates_skipped"]) == ("succeeded", 12, 12)
    assert sorted(r[3] for r in catalog_rows(settings)) == sorted(sha256(d) for d in images)
    assert second.get("/readyz").json()["index_size"] == 12


# --- real photos ------------------------------------------------------------------------------------------------------
@pytest.mark.both_databases
def test_sneaker_reference_photos_import_by_folders(
    client: TestClient, data_dir: Path, sneakers_dir: Path, sneaker_rows: list[dict[str, str]]
) -> None:
    chosen = pick_sneakers(sneaker_rows, 8)
    members = [
        (f"{row['brand']}/{row['product']}/{row['label']}/{Path(row['path']).name}", (sneakers_dir / row["path"]).read_bytes())
        for row in chosen
    ]
    job = import_archive(client, zip_bytes(members), "sneakers.zip")
    assert (job["state"], job["images_added"], job["errors"]) == ("succeeded", 8, [])
    listed = client.get("/v1/catalog/products?brand=Nike").json()["products"]
    products = {(p["name"], p["authentic"], p["counterfeit"]) for p in listed}
    assert products == {("air-force-1", 2, 2), ("jordan-1", 2, 2)}
    row = chosen[0]
    top = scan(client, [(sneakers_dir / row["path"]).read_bytes()], brand="Nike")["images"][0]["matches"][0]
    assert (top["product"], top["label"], top["similarity"] > 0.999) == (row["product"], row["label"], True)
