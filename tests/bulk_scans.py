"""Shared by the scan-batch tests (tests/cli/test_scan_batch_inputs.py, tests/service/scanning/test_ray_batch.py): a
small catalog, the same listings as CSV, JSON lines or Parquet, the CLI, and answers compared row for row."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from cli.main import cli
from service.bulk.outputs import read_parquet_answers
from service.core import ServiceCore
from service.scanning.photo_prep import PhotoInput
from tests import imaging
from tests.helpers import TINY_MODEL_FLAGS, tiny_settings

VOLATILE = {"scan_id", "created_at"}  # random or a clock: the only fields two runs may answer differently

PHOTOS: dict[str, bytes] = {
    **{f"{seed}.jpg": imaging.jpeg(seed) for seed in range(1, 9)},
    "bad.jpg": b"not an image",
    "bomb.png": imaging.png_claiming_size(20_000, 20_000),  # 400 Mpx: over max_image_pixels (413)
}
ROWS: list[dict[str, str]] = [
    {"path": "1.jpg", "listing_id": "L1"},
    {"path": "2.jpg", "listing_id": "L2", "brand": "Acme"},
    {"path": "5.jpg", "listing_id": "L1"},  # L1's second photo, rows apart
    {"path": "3.jpg", "listing_id": "L3", "brand": "Acme", "product": "p3"},
    {"path": "4.jpg", "listing_id": "L4", "brand": "Other"},  # a brand the catalog does not have: empty scope
    {"path": "6.jpg"},  # no listing_id: identified by its path
    {"path": "missing.jpg", "listing_id": "E-missing"},
    {"path": "bad.jpg", "listing_id": "E-bad"},
    {"path": "bomb.png", "listing_id": "E-big"},
    *({"path": f"{seed % 8 + 1}.jpg", "listing_id": f"M{seed}"} for seed in range(12)),
]
LISTING_IDS = ["L1", "L2", "L3", "L4", "6.jpg", "E-missing", "E-bad", "E-big", *(f"M{seed}" for seed in range(12))]
ERRORS = {"E-missing": 400, "E-bad": 400, "E-big": 413}


def build_catalog(data_dir: Path) -> None:
    """Four reference photos of Acme (seeds 1..4, products p1..p4), the index saved."""
    core = ServiceCore.open(tiny_settings(data_dir))
    try:
        for seed in range(1, 5):
            core.writer.add_reference(
                PhotoInput(imaging.jpeg(seed)), "Acme", f"p{seed}", "authentic" if seed % 2 else "counterfeit"
            )
        core.index_keeper.save()
    finally:
        core.close()


def write_listings(folder: Path, fmt: str, rows: list[dict[str, str]] | None = None) -> Path:
    """The listings (ROWS by default) as a manifest of format csv, jsonl or parquet, the photos beside it."""
    rows = ROWS if rows is None else rows
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in PHOTOS.items():
        (folder / name).write_bytes(data)
    path = folder / f"listings.{fmt}"
    columns = ["path", "listing_id", "brand", "product"]
    if fmt == "csv":
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows]), path)
    return path


def run(*args: str, data_dir: Path) -> Result:
    return CliRunner().invoke(cli, [*args, *TINY_MODEL_FLAGS, "--data-dir", str(data_dir)], catch_exceptions=False)


def answers(out: Path) -> list[dict[str, Any]]:
    """Every answer in OUT, in the order written: JSON lines, or a folder of Parquet parts."""
    if out.is_dir():
        return read_parquet_answers(out)
    return [json.loads(line) for line in out.read_text().splitlines()]


def by_listing(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found = {str(row["listing_id"]): row for row in rows}
    assert len(found) == len(rows), "a listing answered twice"
    return found


def assert_same_answers(left: dict[str, Any], right: dict[str, Any]) -> None:
    """The same answer but for random ids and timestamps (floats within 1e-6: two batchings of one photo)."""
    assert list(left) == list(right)
    for key in left:
        if key not in VOLATILE:
            _assert_close(left[key], right[key], key)


def _assert_close(a: Any, b: Any, where: str) -> None:
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, int | float) and isinstance(b, int | float), where
        assert math.isclose(a, b, abs_tol=1e-6), f"{where}: {a} != {b}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), where
        for key in a:
            _assert_close(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_close(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"
