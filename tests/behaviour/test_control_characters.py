"""Names and ids refuse control characters wherever they come in (HTTP fields, manifests, archives, the CLI), and
nothing echoes one back: NUL, C0 controls, DEL, C1 controls and the Unicode line/paragraph separators. A reviewer's
free-text note may hold line breaks and tabs, nothing else of the kind."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from fastapi.testclient import TestClient

from cli.main import cli
from service.api.errors import domain_error_status
from service.catalog.validation import check_text, clean_note
from service.config import Settings
from service.core import ServiceCore
from service.errors import InvalidValue
from tests import imaging
from tests.archives import manifest, zip_bytes
from tests.helpers import TINY_MODEL_FLAGS, add_reference, scan, sha256, stored_state
from tests.service.api.imports_helpers import catalog_rows, folder_members, import_archive, submit

CONTROLS = ["\x00", "\x07", "\x1b[31m", "\x7f", "\x85", "\u2028", "\r", "\n", "\t"]


def run(*args: str, data_dir: Path) -> Result:
    return CliRunner().invoke(cli, [*args, *TINY_MODEL_FLAGS, "--data-dir", str(data_dir)], catch_exceptions=False)


def no_raw_controls(body: bytes) -> bool:
    return not any(b < 0x20 or b == 0x7F for b in body)


# --- HTTP fields ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("control", CONTROLS)
def test_scan_refuses_a_listing_id_with_a_control_character(client: TestClient, data_dir: Path, control: str) -> None:
    add_reference(client, imaging.jpeg(1))
    before = stored_state(client, data_dir)
    refused = scan(client, [imaging.jpeg(2)], expect=422, listing_id=f"L-1{control}x")
    assert "listing_id contains control characters" in refused["detail"]
    assert stored_state(client, data_dir) == before  # nothing recorded
    assert scan(client, [imaging.jpeg(2)], listing_id="L-1 née/ß")["listing_id"] == "L-1 née/ß"  # printable text is fine


@pytest.mark.both_databases
@pytest.mark.parametrize("field", ["brand", "product"])
def test_names_refuse_del_and_c1_controls_too(settings: Settings, client: TestClient, data_dir: Path, field: str) -> None:
    for control in ("\x7f", "\x9b", "\u2029"):
        fields = {"brand": "Acme", "product": "runner", field: f"Ac{control}me"}
        refused = add_reference(client, imaging.jpeg(1), fields["brand"], fields["product"], expect=422)
        assert f"{field} contains control characters" in refused["detail"]
        scan(client, [imaging.jpeg(1)], expect=422, **{field: f"Ac{control}me"})
    assert catalog_rows(settings) == []


@pytest.mark.both_databases
def test_a_reference_source_with_a_control_character_is_refused(settings: Settings, client: TestClient, data_dir: Path) -> None:
    refused = add_reference(client, imaging.jpeg(1), source="shoot\x00 1", expect=422)
    assert "source contains control characters (\\x00)" in refused["detail"]
    assert catalog_rows(settings) == []
    add_reference(client, imaging.jpeg(1), source="shoot 1 — studio")
    assert [row[4] for row in catalog_rows(settings)] == ["shoot 1 — studio"]


@pytest.mark.both_databases  # PostgreSQL: a NUL (which its text cannot hold) matches nothing, as on SQLite
def test_unknown_ids_with_control_characters_answer_404_without_echoing_them(client: TestClient) -> None:
    for path in ("/v1/scans/s%00%1b[2J", "/v1/catalog/images/ref%00%07", "/v1/catalog/imports/imp%1b%00"):
        response = client.get(path)
        assert response.status_code == 404, (path, response.text)
        assert no_raw_controls(response.content) and "\x00" not in response.json()["detail"]


# --- imports over HTTP --------------------------------------------------------------------------------------------------
def test_an_import_refuses_a_split_or_filename_with_control_characters(client: TestClient, data_dir: Path) -> None:
    archive = zip_bytes(folder_members("Acme", "runner", "authentic", [imaging.jpeg(1)]))
    assert "split contains control characters" in submit(client, archive, expect=422, split="ref\x00")["detail"]
    refused = submit(client, archive, filename="cat\x1b]0;pwned\x07.zip", expect=422)
    assert "filename contains control characters" in refused["detail"]
    assert client.get("/v1/catalog/imports").json()["jobs"] == []  # no job was made
    assert not (data_dir / "imports").exists() or list((data_dir / "imports").iterdir()) == []


@pytest.mark.both_databases
def test_an_import_reports_rows_with_control_characters_and_keeps_the_others(
    settings: Settings, client: TestClient, data_dir: Path
) -> None:
    good, bad = imaging.jpeg(1), imaging.jpeg(2)
    rows = [
        ("a.jpg", "Acme", "runner", "authentic", "studio", "shoot 1"),  # line 2: fine
        ("b.jpg", "Ac\x1bme", "runner", "authentic", "", ""),  # 3
        ("b.jpg", "Acme", "run\x00ner", "authentic", "", ""),  # 4
        ("b.jpg", "Acme", "runner", "authentic", "shoot\x07", ""),  # 5
        ("b.jpg", "Acme", "runner", "authentic", "", "g\u2028h"),  # 6
        ("b\x00.jpg", "Acme", "runner", "authentic", "", ""),  # 7: a NUL in a path is a row error, not a crash
    ]
    header = ("path", "brand", "product", "label", "source", "group")
    job = import_archive(client, zip_bytes([("manifest.csv", manifest(rows, header)), ("a.jpg", good), ("b.jpg", bad)]))
    assert (job["state"], job["images_added"]) == ("succeeded", 1), job["errors"]
    reasons = {e["row"]: e["reason"] for e in job["errors"]}
    assert sorted(reasons) == [3, 4, 5, 6, 7]
    for row, column in ((3, "brand"), (4, "product"), (5, "source"), (6, "group"), (7, "path")):
        assert f"{column} contains a control character" in reasons[row], reasons
    assert [row[3] for row in catalog_rows(settings)] == [sha256(good)]

    members = [*folder_members("Acme", "runner", "authentic", [good]), ("Acme\x1b[2J/runner/authentic/x.jpg", bad)]
    folders = import_archive(client, zip_bytes(members))
    assert (folders["state"], folders["images_added"], folders["duplicates_skipped"]) == ("succeeded", 0, 1)
    (error,) = folders["errors"]
    assert error["path"] == "Acme\\x1b[2J/runner/authentic/x.jpg" and "control characters (\\x1b)" in error["reason"]
    raw = client.get(f"/v1/catalog/imports/{folders['job_id']}").content
    assert no_raw_controls(raw) and b"\\u001b" not in raw


# --- the CLI ----------------------------------------------------------------------------------------------------------
def test_keys_create_refuses_a_name_or_brand_with_control_characters(data_dir: Path) -> None:
    for args in (["--role", "admin", "--name", "ops\x1b[2J"], ["--role", "brand", "--brand", "Ac\x00me", "--name", "acme"]):
        result = run("keys", "create", *args, data_dir=data_dir)
        assert result.exit_code == 2 and "contains a control character" in result.output, result.output
    listed = run("keys", "list", data_dir=data_dir)
    assert json.loads(listed.stdout)["keys"] == []
    made = run("keys", "create", "--role", "admin", "--name", "  ops team  ", data_dir=data_dir)
    assert made.exit_code == 0 and json.loads(made.stdout)["name"] == "ops team"


def test_catalog_import_reports_manifest_rows_with_control_characters(data_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(imaging.jpeg(1))
    (folder / "b.jpg").write_bytes(imaging.jpeg(2))
    rows = [("a.jpg", "Acme", "runner", "authentic", "", ""), ("b.jpg", "Acme", "runner", "authentic", "s\x00", "")]
    (folder / "manifest.csv").write_bytes(manifest(rows, ("path", "brand", "product", "label", "source", "group")))
    result = run("catalog", "import", str(folder / "manifest.csv"), data_dir=data_dir)
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert (report["added"], report["errors"]) == (
        1,
        [{"row": "line 3", "reason": "source contains a control character (\\x00)"}],
    )


def test_scan_batch_refuses_a_listing_id_with_control_characters(core: ServiceCore, data_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "1.jpg").write_bytes(imaging.jpeg(1))
    listings = tmp_path / "listings.csv"
    listings.write_text('path,listing_id\n1.jpg,L1\n1.jpg,"L\x002"\n', encoding="utf-8")
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(
        cli, ["scan-batch", str(listings), "--out", str(out), *TINY_MODEL_FLAGS, "--data-dir", str(data_dir)]
    )
    assert result.exit_code == 1
    assert "line 3: listing_id contains control characters (\\x00)" in result.output
    assert not out.exists() or out.read_text() == ""


def test_scan_cli_refuses_a_listing_id_with_control_characters(core: ServiceCore, data_dir: Path, tmp_path: Path) -> None:
    photo = tmp_path / "p.jpg"
    photo.write_bytes(imaging.jpeg(1))
    result = CliRunner().invoke(
        cli, ["scan", str(photo), "--listing-id", "L\x1b[2J", *TINY_MODEL_FLAGS, "--data-dir", str(data_dir)]
    )
    assert result.exit_code == 1 and "listing_id contains control characters" in result.output
    with sqlite3.connect(data_dir / "catalog.sqlite3") as db:
        assert db.execute("select count(*) from scan_records").fetchone()[0] == 0


# --- the one check behind them all ----------------------------------------------------------------------------------
def test_notes_may_hold_line_breaks_and_tabs_but_no_other_control_character() -> None:
    note = "looks fake:\n\t- stitching\r\n\t- logo"
    assert clean_note(note) == note
    assert clean_note("") is None and clean_note(None) is None
    for bad in ("a\x00b", "a\x1b[2Jb", "a\rb", "a\x7fb", "a\u2028b"):
        with pytest.raises(InvalidValue) as caught:
            clean_note(bad)
        assert domain_error_status(caught.value)[0] == 422 and "note contains control characters" in str(caught.value)
    with pytest.raises(InvalidValue, match="longer than 3"):
        check_text("abcd", "id", 3)
