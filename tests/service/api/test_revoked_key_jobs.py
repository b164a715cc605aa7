"""An import job acts for the key that submitted it: once that key is revoked (or gone), the job ends `failed` with the
reason and adds nothing more, whether the revocation came before it started, before a restart resumed it, or between
two of its chunks."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.access.api_keys import LOCAL_ADMIN, ApiKeyStore, Principal
from service.config import Settings
from service.core import ServiceCore
from service.imports.job_store import ImportJobStore, job_view
from service.imports.jobs import ImportJobs
from service.imports.runner import run_import_job
from tests.archives import zip_bytes
from tests.helpers import sha256, tiny_settings
from tests.service.api.imports_helpers import catalog_rows, folder_members, leftovers, photos, wait_for

pytestmark = pytest.mark.both_databases  # the tests that use the database run on SQLite and PostgreSQL


def _brand_key(core: ServiceCore) -> Principal:
    record, token = core.keys.create("brand", ["Acme"], "acme team")
    principal = core.keys.authenticate(token)
    assert principal is not None and principal.key_id == record["key_id"]
    return principal


def _added_by(client: TestClient, key_id: str) -> int:
    entries = client.get("/v1/audit", params={"actor": key_id, "action": "catalog.add", "limit": 1000}).json()["entries"]
    return len(entries)


def test_a_queued_job_of_a_key_revoked_before_a_restart_fails_and_adds_nothing(
    database_url: str | None, make_client: Callable[..., TestClient], make_core: Callable[[Settings], ServiceCore], data_dir: Path
) -> None:
    settings = tiny_settings(data_dir, database_url=database_url, import_chunk_rows=2)
    core = make_core(settings)
    acme = _brand_key(core)
    stopped = ImportJobs(settings, lambda: core)  # a service that accepted the upload, then stopped
    archive = zip_bytes(folder_members("Acme", "runner", "authentic", photos(6)))
    queued = stopped.submit(archive, acme)
    assert queued["state"] == "queued"
    ApiKeyStore(core.database).revoke(acme.key_id)  # `counterfeit-scan keys revoke`, another process

    client = make_client(settings, core)  # the next start picks the job up, and must not run it
    job = wait_for(client, queued["job_id"])
    assert job["state"] == "failed", job
    assert f"the key {acme.key_id} that submitted it was revoked at" in job["failure"], job["failure"]
    assert (job["images_added"], job["rows_done"]) == (0, 0)
    assert catalog_rows(settings) == []
    assert _added_by(client, acme.key_id) == 0
    finish = client.get("/v1/audit", params={"action": "catalog.import.finish"}).json()["entries"]
    assert [(e["target"], e["details"]["state"]) for e in finish] == [(queued["job_id"], "failed")]
    assert "revoked" in finish[0]["details"]["failure"]
    assert leftovers(data_dir) == []  # the archive is not kept for a job that cannot run


def test_a_revocation_between_two_chunks_stops_the_job_after_the_chunk_in_flight(
    database_url: str | None, make_core: Callable[[Settings], ServiceCore], data_dir: Path
) -> None:
    settings = tiny_settings(data_dir, database_url=database_url, import_chunk_rows=2)
    core = make_core(settings)
    acme = _brand_key(core)
    images = photos(6)
    job_id = ImportJobs(settings, lambda: core).submit(zip_bytes(folder_members("Acme", "runner", "authentic", images)), acme)[
        "job_id"
    ]
    other_process = ApiKeyStore(core.database)

    class RevokedAfterFirstChunk(threading.Event):
        """The worker's stop flag, read once before each chunk; the key is revoked just before the second chunk."""

        checks = 0

        def is_set(self) -> bool:
            self.checks += 1
            if self.checks == 2:
                other_process.revoke(acme.key_id)
            return super().is_set()

    stop = RevokedAfterFirstChunk()
    store = ImportJobStore(core.database)
    assert store.claim("worker", settings.imports.lease_s) == job_id
    run_import_job(core, store, job_id, stop, "worker")
    row = store.get(job_id)
    assert row is not None
    job = job_view(row)
    assert stop.checks == 2  # it stopped at the second chunk, not at the end
    assert job["state"] == "failed" and "revoked" in (job["failure"] or ""), job
    assert (job["rows_total"], job["rows_done"], job["images_added"]) == (6, 2, 2)
    stored = catalog_rows(settings)
    assert len(stored) == 2 and {r[3] for r in stored} <= {sha256(d) for d in images}
    assert len(core.audit.query(actor=acme.key_id, action="catalog.add")) == 2


def test_jobs_of_unknown_keys_and_of_the_local_admin_once_auth_is_on_fail(
    database_url: str | None, make_client: Callable[..., TestClient], make_core: Callable[[Settings], ServiceCore], data_dir: Path
) -> None:
    settings = tiny_settings(data_dir, database_url=database_url)
    core = make_core(settings)
    stopped = ImportJobs(settings, lambda: core)
    archive = zip_bytes(folder_members("Acme", "runner", "authentic", photos(2)))
    ghost = stopped.submit(archive, Principal("key_0123456789abcdef", "admin", frozenset()))["job_id"]
    local = stopped.submit(archive, LOCAL_ADMIN)["job_id"]  # accepted while auth was disabled

    client = make_client(settings, core)  # auth on
    ghost_job, local_job = wait_for(client, ghost), wait_for(client, local)
    assert (ghost_job["state"], local_job["state"]) == ("failed", "failed")
    assert "does not exist" in ghost_job["failure"]
    assert "auth was disabled" in local_job["failure"]
    assert catalog_rows(settings) == []


def test_a_job_of_the_local_admin_runs_while_auth_stays_disabled(
    database_url: str | None, make_client: Callable[..., TestClient], make_core: Callable[[Settings], ServiceCore], data_dir: Path
) -> None:
    settings = tiny_settings(data_dir, database_url=database_url, auth_disabled=True)
    core = make_core(settings)
    images = photos(2)
    job_id = ImportJobs(settings, lambda: core).submit(
        zip_bytes(folder_members("Acme", "runner", "authentic", images)), LOCAL_ADMIN
    )["job_id"]
    job = wait_for(make_client(settings, core), job_id)
    assert (job["state"], job["images_added"]) == ("succeeded", 2), job
    assert sorted(r[3] for r in catalog_rows(settings)) == sorted(sha256(d) for d in images)
