"""Manifest CSV reading: columns, splits, path safety, and the shared data sets' own manifests."""

from __future__ import annotations

from pathlib import Path

import pytest

from reference_catalog import ManifestError, read_manifest, write_manifest
from tests.helpers import SHARED_DATA, shared_set


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_text(text, encoding=encoding)
    return path


def test_rows_paths_extras_and_split(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    manifest = write(
        tmp_path / "m.csv",
        "path,brand,product,label,split,group\n"
        "img/a.jpg,Acme,runner,authentic,reference,g1\n"
        "img/b.jpg, Acme , runner ,counterfeit,query,g2\n"
        "img/c.jpg,Acme,court,authentic,reference,g3\n",
    )
    everything = read_manifest(manifest)
    assert everything.errors == []
    assert [r.line for r in everything.rows] == [2, 3, 4]
    b = everything.rows[1]
    assert (b.brand, b.product, b.label) == ("Acme", "runner", "counterfeit")
    assert b.path == (tmp_path / "img" / "b.jpg").resolve()
    assert b.extra == {"split": "query", "group": "g2"}

    reference = read_manifest(manifest, split="reference")
    assert [r.path.name for r in reference.rows] == ["a.jpg", "c.jpg"]
    assert read_manifest(manifest, split="nope").rows == []


def test_bad_rows_are_reported_by_line_and_good_rows_kept(tmp_path: Path) -> None:
    manifest = write(
        tmp_path / "m.csv",
        "path,brand,product,label\n"
        "ok.jpg,Acme,runner,authentic\n"
        "x.jpg,Acme,runner,fake\n"
        "../outside.jpg,Acme,runner,authentic\n"
        "/etc/passwd,Acme,runner,authentic\n"
        "sub/../../outside.jpg,Acme,runner,authentic\n"
        ",Acme,runner,authentic\n"
        "y.jpg,,runner,authentic\n"
        f"z.jpg,{'B' * 201},runner,authentic\n"
        "sub/../ok2.jpg,Acme,runner,counterfeit\n",
    )
    read = read_manifest(manifest)
    assert [r.path.name for r in read.rows] == ["ok.jpg", "ok2.jpg"]
    errors = dict(read.errors)
    assert sorted(errors) == [3, 4, 5, 6, 7, 8, 9]
    assert "unknown label 'fake'" in errors[3]
    assert "escapes" in errors[4] and "escapes" in errors[6]
    assert "absolute path" in errors[5]
    assert errors[7] == "empty path" and errors[8] == "empty brand"
    assert "longer than 200" in errors[9]


def test_manifest_level_errors(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(tmp_path / "missing.csv")
    with pytest.raises(ManifestError, match="lacks column"):
        read_manifest(write(tmp_path / "a.csv", "path,brand,label\nx.jpg,Acme,authentic\n"))
    with pytest.raises(ManifestError, match="no 'split' column"):
        read_manifest(write(tmp_path / "b.csv", "path,brand,product,label\nx.jpg,A,B,authentic\n"), split="query")
    with pytest.raises(ManifestError, match="UTF-8"):
        read_manifest(write(tmp_path / "c.csv", "path,brand,product,label\nx.jpg,Caf\u00e9,B,authentic\n", "latin-1"))


def test_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    read = read_manifest(write(tmp_path / "m.csv", "path,brand,product,label\nx.jpg,A,B,authentic\n", "utf-8-sig"))
    assert len(read.rows) == 1 and read.errors == []


def test_write_manifest_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    rows = [("images/a.jpg", "Acme", "runner", "authentic", "shop", "shoot-1"), ("b.png", "Acme", "x", "counterfeit", None, None)]
    write_manifest(path, rows)
    read = read_manifest(path)
    assert [(r.path.name, r.brand, r.product, r.label, r.extra.get("source"), r.extra.get("group")) for r in read.rows] == [
        ("a.jpg", "Acme", "runner", "authentic", "shop", "shoot-1"),
        ("b.png", "Acme", "x", "counterfeit", "", ""),
    ]


def test_shared_sneaker_manifest_is_valid() -> None:
    folder = shared_set("sneakers")
    read = read_manifest(folder / "manifest.csv")
    assert read.errors == []
    assert len(read.rows) == 600
    assert all(row.path.is_file() for row in read.rows)
    assert {r.label for r in read.rows} == {"authentic", "counterfeit"}
    assert len(read_manifest(folder / "manifest.csv", split="reference").rows) == 300


def test_shared_grocery_and_distractor_manifests() -> None:
    grocery = read_manifest(shared_set("grocery") / "manifest.csv", split="reference")
    assert grocery.errors == [] and len(grocery.rows) > 0
    assert all(row.path.is_file() for row in grocery.rows)
    distractors = read_manifest(shared_set("distractors") / "manifest.csv", labels=("unrelated",), require_brand=False)
    assert distractors.errors == [] and len(distractors.rows) == 21
    assert all(row.path.is_file() for row in distractors.rows)
    assert SHARED_DATA.name == "data"
