"""`scan-batch` manifests as CSV, JSON lines or Parquet; answers as JSON lines or Parquet part files (round trip, resume
after a crash); the Ray engine's refusals and its absence (the engine itself: tests/service/scanning/test_ray_batch.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import service.bulk
from service.bulk import outputs
from tests.bulk_scans import ERRORS, LISTING_IDS, answers, assert_same_answers, by_listing, run, write_listings
from tests.helpers import REPO_ROOT


class Crash(Exception):
    """A run interrupted from within (click would turn a KeyboardInterrupt into an exit status)."""


def test_every_manifest_format_gives_the_same_listings(
    catalog: Path, tmp_path: Path, local_answers: dict[str, dict[str, Any]]
) -> None:
    pytest.importorskip("pyarrow")
    assert list(local_answers) == LISTING_IDS  # manifest order; rows sharing a listing_id are one listing
    assert len(local_answers["L1"]["images"]) == 2
    assert {k: v["status"] for k, v in local_answers.items() if "error" in v} == ERRORS
    for fmt in ("jsonl", "parquet"):
        out = tmp_path / f"from-{fmt}.jsonl"
        result = run("scan-batch", str(write_listings(tmp_path / fmt, fmt)), "--out", str(out), data_dir=catalog)
        assert result.exit_code == 0, result.output
        got = by_listing(answers(out))
        assert list(got) == LISTING_IDS
        for listing_id, answer in local_answers.items():
            if "error" in answer:  # the same error, naming the same photo of another folder
                assert (got[listing_id]["status"], len(got[listing_id]["paths"])) == (answer["status"], 1)
            else:
                assert_same_answers(answer, got[listing_id])


def test_parquet_output_round_trips_to_the_json_lines_answers(
    catalog: Path, tmp_path: Path, local_answers: dict[str, dict[str, Any]]
) -> None:
    pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    out = tmp_path / "results.parquet"
    result = run("scan-batch", str(tmp_path / "csv" / "listings.csv"), "--out", str(out), data_dir=catalog)
    assert result.exit_code == 0, result.output
    assert out.is_dir() and [p.name for p in out.iterdir() if p.suffix == ".tmp"] == []
    got = by_listing(answers(out))
    assert list(got) == LISTING_IDS
    for listing_id, answer in local_answers.items():
        assert_same_answers(answer, got[listing_id])
    table = pq.read_table(out)  # the folder reads as one table: scalar fields typed, nested ones JSON text
    assert table.num_rows == len(LISTING_IDS)
    assert str(table.schema.field("risk").type) == "double" and str(table.schema.field("images").type) == "string"
    assert str(table.schema.field("status").type) == "int64"


def test_parquet_output_resumes_after_a_crash_with_every_listing_once(
    catalog: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("pyarrow")
    manifest = write_listings(tmp_path / "in", "csv")
    out = tmp_path / "results"
    monkeypatch.setattr(outputs, "PART_ROWS", 3)
    real_write = outputs.ParquetOutput.write
    written = 0

    def crash_after_seven(self: outputs.ParquetOutput, answer: dict[str, Any]) -> None:
        nonlocal written
        if written == 7:
            raise Crash("the run stops here: 6 answers in two parts, 1 in hand")
        written += 1
        real_write(self, answer)

    monkeypatch.setattr(outputs.ParquetOutput, "write", crash_after_seven)
    with pytest.raises(Crash):
        run("scan-batch", str(manifest), "--out", str(out), "--format", "parquet", data_dir=catalog)
    monkeypatch.setattr(outputs.ParquetOutput, "write", real_write)
    saved = len(answers(out))
    assert 6 <= saved <= 7  # the parts written, and the answer in hand when the crash came (saved on the way out)
    (out / "part-torn.parquet.tmp").write_bytes(b"PAR1 half a part")  # what a hard crash mid-write leaves

    result = run("scan-batch", str(manifest), "--out", str(out), "--format", "parquet", data_dir=catalog)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["skipped"], summary["scanned"] + summary["errors"]) == (saved, len(LISTING_IDS) - saved)
    assert sorted(by_listing(answers(out))) == sorted(LISTING_IDS)  # none lost, none twice
    assert not list(out.glob("*.tmp"))
    again = run("scan-batch", str(manifest), "--out", str(out), "--format", "parquet", data_dir=catalog)
    assert json.loads(again.stdout)["skipped"] == len(LISTING_IDS)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", '{"path": "a.jpg"}\n["a.jpg"]\n', "line 2: not a JSON object"),
        ("bad.jsonl", '{"path": "a.jpg"}\n{"listing_id": "x"}\n', "line 2: empty path"),
        ("bad.json", "{not json\n", "line 1: not JSON"),
        ("bad.csv", "listing_id\nx\n", "needs a 'path' column"),
    ],
)
def test_a_manifest_that_cannot_be_read_names_the_fault(
    catalog: Path, tmp_path: Path, name: str, content: str, message: str
) -> None:
    manifest = tmp_path / name
    manifest.write_text(content)
    result = run("scan-batch", str(manifest), "--out", str(tmp_path / "out.jsonl"), data_dir=catalog)
    assert result.exit_code == 1 and message in result.output


def test_a_parquet_manifest_without_a_path_column_is_refused(catalog: Path, tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"listing_id": "x"}]), tmp_path / "l.parquet")
    result = run("scan-batch", str(tmp_path / "l.parquet"), "--out", str(tmp_path / "o.jsonl"), data_dir=catalog)
    assert result.exit_code == 1 and "needs a 'path' column" in result.output


def test_outputs_of_the_wrong_kind_are_refused(catalog: Path, tmp_path: Path) -> None:
    manifest = write_listings(tmp_path / "in", "csv", [{"path": "1.jpg", "listing_id": "A"}])
    (tmp_path / "file.parquet").write_text("not a folder")
    result = run("scan-batch", str(manifest), "--out", str(tmp_path / "file.parquet"), data_dir=catalog)
    assert result.exit_code == 1 and "is a file" in result.output
    result = run("scan-batch", str(manifest), "--out", str(tmp_path / "in"), data_dir=catalog)
    assert result.exit_code == 1 and "is a folder" in result.output


def test_record_with_ray_is_refused_before_any_work(catalog: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = write_listings(tmp_path / "in", "csv", [{"path": "1.jpg", "listing_id": "A"}])
    monkeypatch.setenv("COUNTERFEIT_SCAN_BULK_ENGINE", "ray")  # the flag's environment variable
    result = run("scan-batch", str(manifest), "--out", str(tmp_path / "o.jsonl"), "--record", data_dir=catalog)
    assert result.exit_code == 2 and "--record is not available with --engine ray" in result.output
    assert not (tmp_path / "o.jsonl").exists()


def test_without_ray_installed_the_engine_names_the_extra(catalog: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = write_listings(tmp_path / "in", "csv", [{"path": "1.jpg", "listing_id": "A"}])
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    monkeypatch.setitem(sys.modules, "service.bulk.ray_engine", None)
    monkeypatch.delattr(service.bulk, "ray_engine", raising=False)  # imported by an earlier test: forgotten here
    result = run("scan-batch", str(manifest), "--out", str(tmp_path / "o.jsonl"), "--engine", "ray", data_dir=catalog)
    assert result.exit_code == 1 and "pip install 'counterfeit-scan[ray]'" in result.output


def test_the_service_and_the_cli_import_without_ray() -> None:
    blocker = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('ray', 'pyarrow'): raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import cli.main, service.app\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'pyarrow')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", blocker], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
