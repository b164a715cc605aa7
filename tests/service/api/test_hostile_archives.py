"""Hostile import archives over the real app. Each is refused and reported, and none writes to the catalog:

- members that escape the archive (`../`, absolute paths, Windows separators), links, devices and fifos: the job fails;
- archives that expand past `import_max_expanded_bytes` (declared sizes, sizes that lie, tar headers that inflate)
  or hold more than `import_max_members` members: the job fails;
- an upload over `import_max_upload_bytes`: 413 at once (and only that route takes archive-sized bodies);
- non-image and nested-archive members: per-row errors beside the good rows (tests/service/api/test_imports.py).
"""

from __future__ import annotations

import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.core import ServiceCore
from tests import imaging
from tests.archives import (
    CHAR_DEVICE,
    SYMLINK,
    gzip_bytes,
    tar_gz_bytes,
    tar_info,
    zip_bytes,
    zip_member_sizes_lie,
    zip_with_special,
)
from tests.helpers import scan, stored_state, tiny_settings
from tests.service.api.imports_helpers import (
    catalog_revision,
    folder_members,
    import_archive,
    leftovers,
    photos,
    submit,
    wait_for,
)

EXPANDED_LIMIT = 1024 * 1024
UPLOAD_LIMIT = 300_000
SCAN_REQUEST_LIMIT = 60_000
GOOD = folder_members("Acme", "runner", "authentic", photos(2, start=40))
ZEROS = b"\0" * (3 * EXPANDED_LIMIT)


@pytest.fixture
def settings(data_dir: Path) -> Settings:
    return tiny_settings(
        data_dir,
        import_max_expanded_bytes=EXPANDED_LIMIT,
        import_max_members=20,
        import_max_upload_bytes=UPLOAD_LIMIT,
        max_request_bytes=SCAN_REQUEST_LIMIT,
    )


def _pax_header_bomb() -> bytes:
    """A tar whose first header is a pax extended header claiming 64 MiB: tarfile would read it into memory whole."""
    header = tar_info("././@PaxHeader", size=64 * 1024 * 1024, kind=tarfile.XHDTYPE).tobuf(tarfile.USTAR_FORMAT)
    return gzip_bytes(header + b"\0" * 4096)


HOSTILE: dict[str, tuple[bytes, str]] = {
    "zip: ../ in a name": (zip_bytes([*GOOD, ("../evil.jpg", imaging.jpeg(1))]), "escapes the archive"),
    "zip: ../ deeper": (zip_bytes([*GOOD, ("Acme/runner/../../../evil.jpg", imaging.jpeg(1))]), "escapes the archive"),
    "zip: windows ..\\": (zip_bytes([*GOOD, ("..\\..\\evil.jpg", imaging.jpeg(1))]), "escapes the archive"),
    "zip: absolute path": (zip_bytes([*GOOD, ("/srv/evil.jpg", imaging.jpeg(1))]), "absolute path"),
    "zip: drive letter": (zip_bytes([*GOOD, ("C:/evil.jpg", imaging.jpeg(1))]), "absolute path"),
    "zip: symlink": (zip_with_special("Acme/runner/authentic/link.jpg", SYMLINK, b"/etc/passwd", GOOD), "symbolic link"),
    "zip: device": (zip_with_special("Acme/runner/authentic/dev.jpg", CHAR_DEVICE, b"", GOOD), "device"),
    "zip: repeated name": (zip_bytes([*GOOD, GOOD[0]]), "more than once"),
    "tar.gz: ../ in a name": (tar_gz_bytes([*GOOD, ("../../evil.jpg", imaging.jpeg(1))]), "escapes the archive"),
    "tar.gz: absolute path": (tar_gz_bytes([*GOOD, ("/srv/evil.jpg", imaging.jpeg(1))]), "absolute path"),
    "tar.gz: symlink": (
        tar_gz_bytes(GOOD, [tar_info("Acme/runner/authentic/l.jpg", kind=tarfile.SYMTYPE, linkname="/etc/passwd")]),
        "symbolic link",
    ),
    "tar.gz: symlink then a file through it": (
        tar_gz_bytes([("escape/evil.jpg", imaging.jpeg(1))], [tar_info("escape", kind=tarfile.SYMTYPE, linkname="/tmp")]),
        "symbolic link",
    ),
    "tar.gz: hard link": (
        tar_gz_bytes(GOOD, [tar_info("Acme/runner/authentic/h.jpg", kind=tarfile.LNKTYPE, linkname="../../etc/passwd")]),
        "hard link",
    ),
    "tar.gz: character device": (
        tar_gz_bytes(GOOD, [tar_info("Acme/runner/authentic/zero.jpg", kind=tarfile.CHRTYPE)]),
        "device or fifo",
    ),
    "tar.gz: fifo": (tar_gz_bytes(GOOD, [tar_info("Acme/runner/authentic/f.jpg", kind=tarfile.FIFOTYPE)]), "device or fifo"),
    "zip bomb: declared size": (
        zip_bytes([*GOOD, ("Acme/runner/authentic/zeros.jpg", ZEROS)]),
        "declares",
    ),
    "zip bomb: many small members": (
        zip_bytes([(f"Acme/runner/authentic/z{i}.jpg", b"\0" * (EXPANDED_LIMIT // 8)) for i in range(12)]),
        "declares",
    ),
    "zip bomb: sizes that lie": (
        zip_member_sizes_lie(zip_bytes([("a/b/authentic/z.jpg", ZEROS)]), "a/b/authentic/z.jpg", 1000),
        "corrupt",
    ),
    "tar.gz bomb": (tar_gz_bytes([*GOOD, ("Acme/runner/authentic/zeros.jpg", ZEROS)]), "expands past"),
    "tar.gz bomb: pax header": (_pax_header_bomb(), "asks for 67108864 bytes at once"),
    "too many members": (zip_bytes(folder_members("Acme", "runner", "authentic", [b"x"] * 25)), "more than 20"),
    "too many tar members": (tar_gz_bytes([(f"f{i}.jpg", b"") for i in range(25)]), "more than 20"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_archive_fails_its_job_and_writes_nothing(client: TestClient, data_dir: Path, case: str) -> None:
    archive, reason = HOSTILE[case]
    import_archive(client, zip_bytes(folder_members("Acme", "runner", "authentic", photos(2, start=80))))
    before, revision = stored_state(client, data_dir), catalog_revision(data_dir)
    job = import_archive(client, archive)
    assert job["state"] == "failed", job
    assert reason in job["failure"], job["failure"]
    assert (job["images_added"], job["rows_done"], job["errors"]) == (0, 0, [])
    assert stored_state(client, data_dir) == before
    assert catalog_revision(data_dir) == revision
    assert leftovers(data_dir) == []
    assert not list(data_dir.parent.rglob("evil.jpg"))  # nothing landed outside (or inside) the data directory


def test_the_failure_names_the_offending_member(client: TestClient) -> None:
    job = import_archive(client, zip_bytes([*GOOD, ("../evil.jpg", imaging.jpeg(1))]))
    assert "'../evil.jpg'" in job["failure"]
    audit = client.get("/v1/audit?action=catalog.import.finish").json()["entries"]
    assert audit[0]["target"] == job["job_id"] and audit[0]["details"]["state"] == "failed"


@pytest.mark.parametrize("size", [UPLOAD_LIMIT + 10_000, UPLOAD_LIMIT + 2 * 1024 * 1024])
def test_an_oversized_upload_is_refused_at_once(client: TestClient, data_dir: Path, size: int) -> None:
    """Past the bound by a little (the route's check) or by more than the form's slack (refused while streaming)."""
    big = zip_bytes([("Acme/runner/authentic/a.jpg", random_bytes(size))], zipfile.ZIP_STORED)
    response = client.post("/v1/catalog/imports", files={"archive": ("big.zip", big, "application/zip")})
    assert response.status_code == 413, response.text
    assert "larger than" in response.json()["detail"]
    assert leftovers(data_dir) == []
    assert client.get("/v1/catalog/imports").json()["jobs"] == []


def test_archives_may_be_bigger_than_scan_requests_but_scans_may_not(client: TestClient) -> None:
    members = [(f"Acme/runner/authentic/{i}.jpg", imaging.jpeg(i, (200, 200), quality=95)) for i in range(5)]
    archive = zip_bytes(members, zipfile.ZIP_STORED)
    assert SCAN_REQUEST_LIMIT < len(archive) < UPLOAD_LIMIT
    job = import_archive(client, archive)
    assert (job["state"], job["images_added"]) == ("succeeded", 5)
    scan(client, [imaging.jpeg(0, (200, 200), quality=95)] * 2, expect=413)  # the scan route keeps its own bound


def test_a_member_bigger_than_an_image_may_be_is_a_row_error(make_client: Callable[..., TestClient], data_dir: Path) -> None:
    client = make_client(tiny_settings(data_dir, max_image_bytes=20_000))
    huge = imaging.jpeg(3, (200, 200), quality=95)
    assert len(huge) > 20_000
    members = [("Acme/runner/authentic/small.jpg", imaging.jpeg(4)), ("Acme/runner/authentic/huge.jpg", huge)]
    for build in (zip_bytes, tar_gz_bytes):
        job = import_archive(client, build(members))
        assert (job["state"], job["images_added"] + job["duplicates_skipped"]) == ("succeeded", 1)
        assert [e["path"] for e in job["errors"]] == ["Acme/runner/authentic/huge.jpg"]
        assert "more than the 20000 bytes an image may have" in job["errors"][0]["reason"]


def test_a_brand_key_cannot_smuggle_rows_through_names(client: TestClient, core: ServiceCore, data_dir: Path) -> None:
    _, acme = core.keys.create("brand", ["Acme"], "acme")
    members = [*GOOD, ("Acme/../Globex/boot/authentic/x.jpg", imaging.jpeg(9))]
    job = wait_for(client, submit(client, zip_bytes(members), token=acme)["job_id"], token=acme)
    assert job["state"] == "failed" and "escapes the archive" in job["failure"]
    assert catalog_revision(data_dir) == 0


def random_bytes(size: int) -> bytes:
    return np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
