"""The `counterfeit-scan` CLI: catalog import/export, index rebuild, scan, model info; shared data dir with serve."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result
from fastapi.testclient import TestClient

from cli.main import cli
from embeddings import ImageEmbedder
from service.app import create_app
from service.core import ServiceCore
from tests import imaging
from tests.helpers import TINY_MODEL_FLAGS, pick_sneakers, tiny_settings

COLUMNS = ["path", "brand", "product", "label", "group", "split"]


def auth(core: ServiceCore) -> dict[str, str]:
    return {"Authorization": f"Bearer {core.keys.create('admin', [], 'tests')[1]}"}


def run(*args: str, data_dir: Path | None = None, env: dict[str, str] | None = None, database_url: str | None = None) -> Result:
    flags = [*TINY_MODEL_FLAGS, "--data-dir", str(data_dir)] if data_dir is not None else []
    flags += ["--database-url", database_url] if database_url else []
    # Options follow the sub-command; CliRunner keeps stdout (JSON) and stderr (progress, errors) apart.
    return CliRunner().invoke(cli, [*args, *flags], env=env, catch_exceptions=False)


def report(result: Result) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(result.stdout)
    return body


def write_manifest(folder: Path, rows: list[dict[str, str]]) -> Path:
    path = folder / "manifest.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def sneaker_set(tmp_path: Path, sneakers_dir: Path, sneaker_rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Six reference and four query photos of the shared sneaker set, copied next to a fresh manifest."""
    folder = tmp_path / "set"
    rows = pick_sneakers(sneaker_rows, 6, "reference") + pick_sneakers(sneaker_rows, 4, "query")
    for row in rows:
        target = folder / row["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(sneakers_dir / row["path"], target)
    write_manifest(folder, rows)
    return rows


@pytest.mark.both_databases
def test_import_split_rerun_and_the_rest(tmp_path: Path, sneaker_set: list[dict[str, str]], database_url: str | None) -> None:
    manifest = tmp_path / "set" / "manifest.csv"
    data, url = tmp_path / "data", database_url

    first = run("catalog", "import", str(manifest), "--split", "reference", data_dir=data, database_url=url)
    assert first.exit_code == 0, first.output
    body = report(first)
    assert (body["rows"], body["added"], body["duplicates"], body["errors"]) == (6, 6, 0, [])
    assert body["index_size"] == 6

    again = run("catalog", "import", str(manifest), "--split", "reference", data_dir=data, database_url=url)
    assert again.exit_code == 0, again.output
    repeat = report(again)
    assert (repeat["added"], repeat["duplicates"], repeat["errors"]) == (0, 6, [])
    assert repeat["index_version"] == body["index_version"]  # a no-op: the catalog revision did not move

    everything = run("catalog", "import", str(manifest), data_dir=data, database_url=url)
    full = report(everything)
    assert (full["rows"], full["added"], full["duplicates"], full["index_size"]) == (10, 4, 6, 10)

    missing_split = run("catalog", "import", str(manifest), "--split", "holdout", data_dir=data, database_url=url)
    assert missing_split.exit_code == 0 and report(missing_split)["rows"] == 0


def test_import_dedupes_by_content(tmp_path: Path, sneaker_set: list[dict[str, str]]) -> None:
    folder = tmp_path / "set"
    original = sneaker_set[0]
    shutil.copy(folder / original["path"], folder / "copy-of-first.jpg")
    rows = [original, {**original, "path": "copy-of-first.jpg"}, sneaker_set[1]]
    manifest = write_manifest(folder, rows)
    result = run("catalog", "import", str(manifest), data_dir=tmp_path / "data")
    assert result.exit_code == 0, result.output
    body = report(result)
    assert (body["added"], body["duplicates"], body["index_size"]) == (2, 1, 2)


def test_import_reports_bad_rows_and_keeps_the_good_ones(
    tmp_path: Path, sneaker_set: list[dict[str, str]], tiny_embedder: ImageEmbedder
) -> None:
    folder = tmp_path / "set"
    (tmp_path / "outside.jpg").write_bytes(imaging.jpeg(1))
    (folder / "notes.jpg").write_text("not a photo")
    good = sneaker_set[:3]
    first = good[0]
    rows = [
        *good,  # lines 2-4
        {**sneaker_set[3], "label": "fake"},  # 5
        {**sneaker_set[4], "path": "images/no-such-file.jpg"},  # 6
        {**sneaker_set[5], "path": "../outside.jpg"},  # 7
        {**sneaker_set[6], "path": str(tmp_path / "outside.jpg")},  # 8
        {**sneaker_set[7], "path": "notes.jpg"},  # 9
        {**first, "label": "counterfeit" if first["label"] == "authentic" else "authentic"},  # 10: same bytes, other label
    ]
    manifest = write_manifest(folder, rows)
    data = tmp_path / "data"
    result = run("catalog", "import", str(manifest), data_dir=data)
    assert result.exit_code == 1
    body = report(result)
    assert (body["rows"], body["added"], body["index_size"]) == (9, 3, 3)
    reasons = {e["row"]: e["reason"] for e in body["errors"]}
    assert sorted(reasons) == [f"line {n}" for n in (10, 5, 6, 7, 8, 9)]
    assert "unknown label 'fake'" in reasons["line 5"]
    assert "no-such-file.jpg" in reasons["line 6"]
    assert "escapes" in reasons["line 7"]
    assert "absolute path" in reasons["line 8"]
    assert "not a decodable image" in reasons["line 9"]
    assert "already in the catalog" in reasons["line 10"] or "listed earlier" in reasons["line 10"]

    settings = tiny_settings(data)
    core = ServiceCore(settings, tiny_embedder)
    core.index_keeper.sync()
    with TestClient(create_app(settings, core=core), headers=auth(core)) as client:  # the service reads what the CLI wrote
        brands = client.get("/v1/catalog/brands").json()["brands"]
        assert brands == [{"name": "Nike", "products": len({r["product"] for r in good}), "images": 3}]


def test_conflicting_labels_within_one_manifest(tmp_path: Path, sneaker_set: list[dict[str, str]]) -> None:
    folder = tmp_path / "set"
    row = sneaker_set[0]
    other = "counterfeit" if row["label"] == "authentic" else "authentic"
    manifest = write_manifest(folder, [row, {**row, "label": other}])
    result = run("catalog", "import", str(manifest), data_dir=tmp_path / "data")
    assert result.exit_code == 1
    body = report(result)
    assert (body["added"], body["duplicates"]) == (1, 0)
    assert [e["row"] for e in body["errors"]] == ["line 3"]


def test_manifest_without_required_columns_is_refused(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,brand\nx.jpg,Acme\n")
    result = run("catalog", "import", str(manifest), data_dir=tmp_path / "data")
    assert result.exit_code == 1
    assert "lacks column(s) path, product, label" in result.stderr
    assert not (tmp_path / "data").exists()


def test_data_dir_from_the_environment(tmp_path: Path, sneaker_set: list[dict[str, str]]) -> None:
    data = tmp_path / "env-data"
    env = {
        "COUNTERFEIT_SCAN_DATA_DIR": str(data),
        "COUNTERFEIT_SCAN_MODEL": "cs-tiny-vit",
        "COUNTERFEIT_SCAN_PRETRAINED": "",
        "COUNTERFEIT_SCAN_ALLOW_RANDOM_WEIGHTS": "true",
    }
    result = run("catalog", "import", str(tmp_path / "set" / "manifest.csv"), "--split", "query", env=env)
    assert result.exit_code == 0, result.output
    assert report(result)["added"] == 4
    assert (data / "catalog.sqlite3").is_file()


def test_scan_and_rebuild_and_serve_share_the_data_dir(
    tmp_path: Path, sneaker_set: list[dict[str, str]], tiny_embedder: ImageEmbedder
) -> None:
    folder = tmp_path / "set"
    data = tmp_path / "data"
    assert run("catalog", "import", str(folder / "manifest.csv"), data_dir=data).exit_code == 0

    target = sneaker_set[2]
    scanned = run("scan", str(folder / target["path"]), "--listing-id", "L-9", "--brand", "Nike", data_dir=data)
    assert scanned.exit_code == 0, scanned.output
    result = report(scanned)
    assert result["listing_id"] == "L-9"
    top = result["images"][0]["matches"][0]
    assert (top["product"], top["label"]) == (target["product"], target["label"])
    assert top["similarity"] > 0.99

    rebuilt = run("index", "rebuild", data_dir=data)
    assert rebuilt.exit_code == 0, rebuilt.output
    info = report(rebuilt)
    assert info["index_size"] == 10
    assert info["model"]["fingerprint"] == tiny_embedder.info.fingerprint

    # `serve` uses the same layout: the app finds the CLI's catalog, index and scan record
    settings = tiny_settings(data)
    core = ServiceCore(settings, tiny_embedder)
    core.index_keeper.sync()
    with TestClient(create_app(settings, core=core), headers=auth(core)) as client:
        ready = client.get("/readyz").json()
        assert (ready["index_size"], ready["index_version"]) == (10, info["index_version"])
        assert client.get(f"/v1/scans/{result['scan_id']}").json()["listing_id"] == "L-9"
        assert {p["name"] for p in client.get("/v1/catalog/products", params={"brand": "Nike"}).json()["products"]} == {
            r["product"] for r in sneaker_set
        }


def test_scan_rejects_a_bad_photo(tmp_path: Path) -> None:
    photo = tmp_path / "note.jpg"
    photo.write_text("hello")
    result = run("scan", str(photo), data_dir=tmp_path / "data")
    assert result.exit_code == 1
    assert "photo 1 (note.jpg)" in result.stderr and "not a decodable image" in result.stderr


def test_export_then_import_elsewhere(tmp_path: Path, sneaker_set: list[dict[str, str]]) -> None:
    data = tmp_path / "data"
    assert run("catalog", "import", str(tmp_path / "set" / "manifest.csv"), data_dir=data).exit_code == 0
    out = tmp_path / "export"
    exported = run("catalog", "export", str(out), data_dir=data)
    assert exported.exit_code == 0, exported.output
    assert report(exported)["exported"] == 10
    imported = run("catalog", "import", str(out / "manifest.csv"), data_dir=tmp_path / "copy")
    assert imported.exit_code == 0, imported.output
    assert (report(imported)["added"], report(imported)["errors"]) == (10, [])


def test_unknown_model_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["model", "info", "--model", "no-such-net", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "unknown model architecture 'no-such-net'" in result.stderr


def test_console_script_smoke(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "counterfeit-scan"
    if not script.is_file():
        pytest.skip(f"console script not installed at {script}")
    completed = subprocess.run(
        [str(script), "model", "info", *TINY_MODEL_FLAGS, "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    info = json.loads(completed.stdout)
    assert (info["architecture"], info["dim"], info["random_weights"]) == ("cs-tiny-vit", 32, True)


def test_every_setting_is_a_serve_flag() -> None:
    """Each Settings field (every COUNTERFEIT_SCAN_* variable) is also a flag of `serve`, typed like the field."""
    from cli.common import make_settings
    from service.config import Settings

    serve = cli.commands["serve"]
    params = {param.name: param for param in serve.params}
    assert {flat for flat, _, _, _ in Settings.flat_fields()} <= set(params)
    ctx = serve.make_context(
        "serve", ["--batch-max-wait-ms", "7.5", "--keep-scan-photos", "all", "--auth-disabled", "--queue-max-photos", "9"]
    )
    settings = make_settings(**ctx.params)
    throughput = settings.throughput
    assert (
        throughput.batch_max_wait_ms,
        settings.scoring.keep_scan_photos,
        settings.access.auth_disabled,
        throughput.queue_max_photos,
    ) == (
        7.5,
        "all",
        True,
        9,
    )
    with pytest.raises(click.BadParameter):
        serve.make_context("serve", ["--keep-scan-photos", "some"])
