"""The service started on a data directory of the release of 2026-12-05, not migrated beforehand: start-up migrates it,
and everything that release stored is served as it was, over HTTP."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from reference_catalog import create_catalog_engine
from service.app import create_app
from service.config import Settings
from service.console.common import SESSION_COOKIE
from service.core import ServiceCore
from service.db.migrate import current_revision, head_revision
from tests import imaging
from tests.helpers import tiny_settings
from tests.service.db.release import copy_release

STORED = "%Y-%m-%d %H:%M:%S.%f"  # how SQLite rows hold times


def stored_times(path: Path, query: str) -> list[datetime]:
    with sqlite3.connect(path) as db:
        return [datetime.strptime(value, STORED).replace(tzinfo=UTC) for (value,) in db.execute(query)]


def keep_session_alive(path: Path) -> None:
    """The release made a 30-day console session; once the clock has passed its end, the copy's is moved on (in the
    release's own storage format) so that the test still shows an old session being accepted."""
    now = datetime.now(UTC)
    if stored_times(path, "SELECT expires_at FROM console_sessions")[0] < now + timedelta(hours=1):
        with sqlite3.connect(path) as db:
            db.execute("UPDATE console_sessions SET expires_at = ?", [(now + timedelta(days=1)).strftime(STORED)])


def test_the_release_data_directory_is_served_after_start_up_migrates_it(
    tmp_path: Path, make_core: Callable[[Settings], ServiceCore]
) -> None:
    path, release = copy_release(tmp_path / "data")
    keep_session_alive(path)
    audit_times = sorted(stored_times(path, "SELECT at FROM audit_log"))
    assert current_revision(create_catalog_engine(f"sqlite:///{path}")) is None
    settings = tiny_settings(tmp_path / "data")
    core = make_core(settings)  # what `serve` opens: start-up migrates
    assert current_revision(create_catalog_engine(f"sqlite:///{path}")) == head_revision()

    def as_key(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    admin, brand, scanner = (as_key(release[f"{role}_token"]) for role in ("admin", "brand", "scanner"))
    with TestClient(create_app(settings, core=core)) as client:
        # the catalog: the deleted image gone, the relabelled one with its new label, the import's two images
        listed = client.get("/v1/catalog/images", params={"limit": 1000}, headers=admin)
        assert listed.status_code == 200, listed.text
        images: dict[str, dict[str, Any]] = {image["image_id"]: image for image in listed.json()["images"]}
        kept = set(release["image_ids"]) - {release["deleted_image"]}
        assert kept < set(images) and len(images) == listed.json()["total"] == len(kept) + 2
        assert images[release["relabelled_image"]]["label"] == "authentic"
        assert all(image["created_at"].endswith("+00:00") for image in images.values())
        acme = client.get("/v1/catalog/images", params={"limit": 1000}, headers=brand).json()["images"]
        assert acme and {image["brand"] for image in acme} == {"Acme"}

        for scan_id in release["scan_ids"]:
            stored = client.get(f"/v1/scans/{scan_id}", headers=admin)
            assert stored.status_code == 200 and stored.json()["scan_id"] == scan_id, stored.text
        reviewed = client.get(f"/v1/scans/{release['scan_ids'][0]}", headers=brand)  # Acme's feedback on an Acme scan
        assert reviewed.status_code == 200 and [f["brand"] for f in reviewed.json()["feedback"]] == ["Acme"]

        jobs = client.get("/v1/catalog/imports", headers=admin).json()["jobs"]
        assert [(job["job_id"], job["state"], job["images_added"]) for job in jobs] == [(release["import_job"], "succeeded", 2)]

        # the audit log, between two instants given with an offset: the same entries as the stored UTC times say
        plus_two = timezone(timedelta(hours=2))
        since, until = audit_times[5], audit_times[-1] + timedelta(microseconds=1)
        window = {"since": since.astimezone(plus_two).isoformat(), "until": until.astimezone(plus_two).isoformat()}
        entries = client.get("/v1/audit", params={**window, "limit": 1000}, headers=admin).json()["entries"]
        assert len(entries) == len(audit_times) - 5 and all(e["at"].endswith("+00:00") for e in entries)
        assert {datetime.fromisoformat(e["at"]) for e in entries} == set(audit_times[5:])

        # the console session the release signed in (the Acme key's)
        dashboard = client.get("/console/dashboard", headers={"Cookie": f"{SESSION_COOKIE}={release['console_session']}"},
                               follow_redirects=False)  # fmt: skip
        assert dashboard.status_code == 200 and "acme team" in dashboard.text
        assert client.get("/console/dashboard", follow_redirects=False).status_code != 200  # no cookie, no page

        # and new work on the old data: an upload and a scan by the release's keys
        added = client.post("/v1/catalog/images", headers=admin, files={"file": ("new.jpg", imaging.jpeg(77), "image/jpeg")},
                            data={"brand": "Acme", "product": "runner", "label": "authentic"})  # fmt: skip
        assert added.status_code == 201, added.text
        scanned = client.post("/v1/scan", headers=scanner, files=[("images", ("s.jpg", imaging.jpeg(77), "image/jpeg"))])
        assert scanned.status_code == 200, scanned.text
        assert scanned.json()["images"][0]["matches"][0]["image_id"] == added.json()["image_id"]
        assert client.get(f"/v1/scans/{scanned.json()['scan_id']}", headers=scanner).status_code == 200
