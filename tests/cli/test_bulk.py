"""`counterfeit-scan scan-batch`: one line per listing, rows grouped by listing_id, resume after an interruption."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cli.main import cli
from service.core import ServiceCore
from service.scanning.photo_prep import PhotoInput
from tests import imaging
from tests.helpers import TINY_MODEL_FLAGS, tiny_settings


def run(*args: str, data_dir: Path) -> Result:
    return CliRunner().invoke(cli, [*args, *TINY_MODEL_FLAGS, "--data-dir", str(data_dir)], catch_exceptions=False)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def catalog(data_dir: Path) -> None:
    """Four reference photos (seeds 1..4) in the data directory the CLI opens."""
    core = ServiceCore.open(tiny_settings(data_dir))
    try:
        for seed in range(1, 5):
            core.writer.add_reference(PhotoInput(imaging.jpeg(seed)), "Acme", f"p{seed}", "authentic")
        core.index_keeper.save()
    finally:
        core.close()


def manifest(folder: Path, rows: list[dict[str, str]], photos: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in photos.items():
        (folder / name).write_bytes(data)
    path = folder / "listings.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "listing_id", "brand", "product"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def listings(tmp_path: Path) -> Path:
    """Five listings: L1 with two photos (rows apart), L2 with one, L3 scoped to Acme, two rows without a listing_id."""
    photos = {f"{seed}.jpg": imaging.jpeg(seed) for seed in range(1, 5)}
    rows = [
        {"path": "1.jpg", "listing_id": "L1"},
        {"path": "2.jpg", "listing_id": "L2"},
        {"path": "3.jpg", "listing_id": "L3", "brand": "Acme"},
        {"path": "4.jpg", "listing_id": "L1"},
        {"path": "1.jpg", "listing_id": ""},
        {"path": "2.jpg"},
    ]
    return manifest(tmp_path / "in", rows, photos)


def test_one_line_per_listing_with_rows_grouped_by_listing_id(
    catalog: None, listings: Path, data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out" / "results.jsonl"
    result = run("scan-batch", str(listings), "--out", str(out), "--batch-size", "2", "--workers", "2", data_dir=data_dir)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["listings"] == summary["scanned"] == 5 and summary["photos"] == 6 and summary["skipped"] == 0
    written = lines(out)
    assert [r["listing_id"] for r in written] == ["L1", "L2", "L3", "1.jpg", "2.jpg"]  # manifest order
    by_id = {r["listing_id"]: r for r in written}
    assert len(by_id["L1"]["images"]) == 2
    assert [i["matches"][0]["product"] for i in by_id["L1"]["images"]] == ["p1", "p4"]
    assert by_id["L3"]["brand"] == "Acme"
    assert by_id["1.jpg"]["images"][0]["matches"][0]["similarity"] > 0.999
    # the same dict as POST /v1/scan; not recorded unless --record
    assert {"scan_id", "risk", "verdict", "model", "index_version", "images", "reasons"} <= set(by_id["L2"])
    core = ServiceCore.open(tiny_settings(data_dir))
    try:
        assert core.scans.get(by_id["L2"]["scan_id"]) is None
    finally:
        core.close()


def test_record_flag_records_the_scans(catalog: None, listings: Path, data_dir: Path, tmp_path: Path) -> None:
    """Also with three model workers side by side: every listing answered once, in manifest order, and recorded."""
    out = tmp_path / "results.jsonl"
    args = ["scan-batch", str(listings), "--out", str(out), "--record", "--inference-workers", "3", "--batch-size", "1"]
    assert run(*args, data_dir=data_dir).exit_code == 0
    assert [r["listing_id"] for r in lines(out)] == ["L1", "L2", "L3", "1.jpg", "2.jpg"]
    core = ServiceCore.open(tiny_settings(data_dir))
    try:
        assert all(core.scans.get(r["scan_id"]) is not None for r in lines(out))
    finally:
        core.close()


def test_resume_skips_written_listings_and_rescans_a_torn_last_line(
    catalog: None, listings: Path, data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "results.jsonl"
    assert run("scan-batch", str(listings), "--out", str(out), data_dir=data_dir).exit_code == 0
    complete = out.read_bytes().splitlines(keepends=True)
    # An interruption: two listings written, the third cut off mid-line, the last two never reached.
    out.write_bytes(b"".join(complete[:2]) + complete[2][:40])

    result = run("scan-batch", str(listings), "--out", str(out), data_dir=data_dir)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["skipped"], summary["scanned"]) == (2, 3)
    assert "cut short" in result.stderr
    after = out.read_bytes().splitlines(keepends=True)
    assert after[:2] == complete[:2]  # untouched, not scanned again
    assert [r["listing_id"] for r in lines(out)] == ["L1", "L2", "L3", "1.jpg", "2.jpg"]  # none lost, none twice

    again = run("scan-batch", str(listings), "--out", str(out), data_dir=data_dir)
    assert json.loads(again.stdout)["scanned"] == 0 and out.read_bytes() == b"".join(after)


def test_a_listing_that_cannot_be_scanned_gets_an_error_line(catalog: None, data_dir: Path, tmp_path: Path) -> None:
    rows = [
        {"path": "ok.jpg", "listing_id": "A"},
        {"path": "missing.jpg", "listing_id": "B"},
        {"path": "bad.jpg", "listing_id": "C"},
    ]
    path = manifest(tmp_path / "in", rows, {"ok.jpg": imaging.jpeg(1), "bad.jpg": b"not an image"})
    out = tmp_path / "results.jsonl"
    result = run("scan-batch", str(path), "--out", str(out), data_dir=data_dir)
    assert result.exit_code == 0, result.output
    written = {r["listing_id"]: r for r in lines(out)}
    assert "images" in written["A"]
    assert written["B"]["status"] == 400 and "cannot read" in written["B"]["error"]
    assert written["C"]["status"] == 400 and "photo 1" in written["C"]["error"]
    assert json.loads(result.stdout)["errors"] == 2


def test_a_corrupt_line_before_the_end_stops_the_run(catalog: None, listings: Path, data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    out.write_text('{"listing_id": "L1"}\nnot json\n{"listing_id": "L2"}\n')
    result = CliRunner().invoke(
        cli, ["scan-batch", str(listings), "--out", str(out), *TINY_MODEL_FLAGS, "--data-dir", str(data_dir)]
    )
    assert result.exit_code == 1
    assert "line 2 is not a scan result" in result.output
