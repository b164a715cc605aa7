"""The authenticity head in the service: fitted from the catalog, named in scans and records, refitted once catalog
changes settle, served with a `train` output's extra photos, and the kNN fallback said out loud."""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from cli.main import cli
from embeddings import ImageEmbedder, load_embedder
from service.catalog.writer import ImportRow
from service.config import Settings
from service.core import ServiceCore
from service.models.switch import ModelSwitcher
from service.scanning.photo_prep import PhotoInput
from tests import imaging
from tests.helpers import TINY_MODEL_FLAGS, pick_sneakers, scan, tiny_settings


def labelled_rows(n_groups: int = 3, shots: int = 4, first_seed: int = 0, brand: str = "Acme") -> list[ImportRow]:
    """Generated photos of one brand: 2 labels x `n_groups` shoots x `shots` photos (random-weight features: the
    machinery runs, the figures mean nothing)."""
    rows, seed = [], first_seed
    for label in ("authentic", "counterfeit"):
        for g in range(n_groups):
            for _ in range(shots):
                photo = PhotoInput(imaging.jpeg(seed, size=(72, 72)), f"{seed}.jpg")
                rows.append(ImportRow(f"row {seed}", photo, brand, "runner", label, None, f"{label}-shoot-{g}"))
                seed += 1
    return rows


def codes(result: dict[str, Any]) -> list[str]:
    return [str(r["code"]) for r in result["reasons"]]


def test_a_brand_without_enough_labelled_photos_falls_back_to_the_knn_vote_and_says_why(core: ServiceCore) -> None:
    assert core.writer.import_rows(labelled_rows(n_groups=1, shots=3)).added == 6
    heads = core.models.refresh_heads()
    assert heads is not None and heads.heads == {} and "Acme" in heads.skipped
    result = core.pipeline.scan(
        [PhotoInput(imaging.jpeg(0, size=(72, 72)))]
    ).model_dump()  # a catalog photo itself: in the catalog
    assert result["verdict"] != "not_in_catalog"
    reason = next(r for r in result["reasons"] if r["code"] == "no_authenticity_head")
    assert "Acme: too few labelled photos: 3 authentic in 1 shoots, 3 counterfeit in 1 shoots" in reason["message"]
    assert "uncalibrated" in codes(result) and result["calibrated"] is False
    assert result["risk"] == result["score"]  # the vote, as before the head
    assert result["authenticity_head"]["version"] == heads.version  # the (empty) fit is still named


def test_heads_are_refitted_once_when_catalog_changes_settle_and_scans_name_the_fit(
    make_core: Callable[[Settings], ServiceCore], data_dir: Path
) -> None:
    core = make_core(tiny_settings(data_dir, head_refit_delay_s=0.4, head_refit_max_delay_s=60))
    first = core.models.refresh_heads()
    assert first is not None and first.heads == {}
    rows = labelled_rows(n_groups=3, shots=4)
    for start in range(0, len(rows), 4):  # an import in chunks, faster than the quiet time: no fit meanwhile
        core.writer.import_rows(rows[start : start + 4])
        assert not core.models.refresh_heads_if_due()
    assert core.heads.fits == 1
    waiting = core.pipeline.scan([PhotoInput(imaging.jpeg(1, size=(72, 72)))], brand="Acme", record=False).model_dump()
    reason = next(r["message"] for r in waiting["reasons"] if r["code"] == "no_authenticity_head")
    assert f"being refitted for the catalog's latest changes (fitted at revision 0, now {core.model.index.revision})" in reason
    time.sleep(0.5)
    assert core.models.refresh_heads_if_due()  # quiet for the delay: one fit for the whole import
    assert not core.models.refresh_heads_if_due()
    assert core.heads.fits == 2
    heads = core.model.heads
    assert heads is not None and heads.catalog_revision == core.model.index.revision and heads.n_photos == 24
    head = heads.head_for("Acme")
    assert head is not None and (head.n_authentic, head.n_counterfeit, head.folds) == (12, 12, 3)
    result = core.pipeline.scan([PhotoInput(imaging.jpeg(1, size=(72, 72)))], brand="Acme").model_dump()
    assert result["authenticity_head"]["version"] == heads.version and result["calibrated"] is True
    reason = next(r for r in result["reasons"] if r["code"] == "authenticity_head")
    assert (reason["n_authentic"], reason["n_counterfeit"], reason["scope"]) == (12, 12, "Acme")
    assert result["images"][0]["head_probability"] == pytest.approx(reason["probability"], abs=1e-6)
    assert result["risk"] == pytest.approx(reason["probability"], abs=1e-6)  # no near copy of a fake: the head's
    # Saved with the revision: a restart loads it instead of fitting again; another revision fits again.
    reopened = make_core(tiny_settings(data_dir))
    assert reopened.models.refresh_heads() is not None and reopened.heads.fits == 0
    assert reopened.model.heads is not None and reopened.model.heads.version == heads.version
    # A service starting on a catalog changed since the last fit serves the saved heads at once, fitting nothing
    # before it is ready; its background fitter then catches up.
    core.writer.import_rows(labelled_rows(n_groups=1, shots=2, first_seed=500))
    starting = make_core(tiny_settings(data_dir, head_refit_delay_s=0.2))
    stale = starting.models.refresh_heads(fit=False)
    assert stale is not None and stale.version == heads.version and starting.heads.fits == 0
    assert stale.catalog_revision < starting.model.index.revision
    assert not starting.models.refresh_heads_if_due()
    time.sleep(0.3)
    assert starting.models.refresh_heads_if_due() and starting.heads.fits == 1
    assert starting.model.heads is not None and starting.model.heads.n_photos == 28


def test_an_unreadable_heads_file_is_refitted_not_fatal(make_core: Callable[[Settings], ServiceCore], data_dir: Path) -> None:
    core = make_core(tiny_settings(data_dir))
    core.writer.import_rows(labelled_rows())
    heads = core.models.refresh_heads()
    assert heads is not None
    path = core.heads.path_for(core.model.embedder)
    path.write_bytes(b"garbage")
    reopened = make_core(tiny_settings(data_dir))
    again = reopened.models.refresh_heads()
    assert again is not None and again.version == heads.version and reopened.heads.fits == 1


def test_turned_off_the_service_scores_as_before(make_core: Callable[[Settings], ServiceCore], data_dir: Path) -> None:
    core = make_core(tiny_settings(data_dir, head_enabled=False))
    core.writer.import_rows(labelled_rows())
    assert core.models.refresh_heads() is None
    result = core.pipeline.scan([PhotoInput(imaging.jpeg(2, size=(72, 72)))]).model_dump()
    assert "turned off" in next(r["message"] for r in result["reasons"] if r["code"] == "no_authenticity_head")
    assert result["authenticity_head"] is None and result["images"][0]["head_probability"] is None


def test_train_output_activated_serves_heads_fitted_on_its_photos_plus_the_catalog(tmp_path: Path) -> None:
    def write(folder: Path, rows: list[ImportRow]) -> Path:
        folder.mkdir(parents=True)
        with open(folder / "manifest.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "brand", "product", "label", "group"])
            for row in rows:
                (folder / str(row.photo.filename)).write_bytes(row.photo.data)
                writer.writerow([row.photo.filename, row.brand, row.product, row.label, row.group])
        return folder / "manifest.csv"

    catalog = write(tmp_path / "catalog", labelled_rows())
    takedowns = write(tmp_path / "takedowns", labelled_rows(first_seed=100))
    flags = [*TINY_MODEL_FLAGS, "--data-dir", str(tmp_path / "data")]
    runner = CliRunner()
    assert runner.invoke(cli, ["catalog", "import", str(catalog), *flags]).exit_code == 0
    trained = runner.invoke(cli, ["train", str(takedowns), "--out", str(tmp_path / "run"), *flags])
    assert trained.exit_code == 0, trained.output
    activated = runner.invoke(cli, ["model", "activate", str(tmp_path / "run" / "checkpoint.pt"), *flags])
    assert activated.exit_code == 0, activated.output
    photo = tmp_path / "catalog" / "0.jpg"
    scanned = runner.invoke(cli, ["scan", str(photo), "--brand", "Acme", *flags])
    assert scanned.exit_code == 0, scanned.output
    assert '"n_extra_photos": 24' in scanned.stdout and '"n_photos": 48' in scanned.stdout
    # A running service that still serves the base model follows the activation: same fingerprint, other photos.
    settings = tiny_settings(tmp_path / "data")
    core = ServiceCore(settings, load_embedder(settings.model_spec(), settings.export_dir))
    try:
        core.index_keeper.sync()
        core.models.refresh_heads()
        assert core.model.heads is not None and core.model.heads.n_extra_photos == 0
        switcher = ModelSwitcher()
        switcher.follow_registry(core)
        for _ in range(300):
            if switcher.snapshot()["state"] != "preparing":
                break
            time.sleep(0.1)
        assert switcher.snapshot()["state"] == "done", switcher.snapshot()
        assert core.model.heads is not None and core.model.heads.n_extra_photos == 24
    finally:
        core.close()


def test_real_photos_scanned_over_http_carry_the_heads_probability_counts_and_validation(
    real_embedder: ImageEmbedder,
    sneakers_dir: Path,
    sneaker_rows: list[dict[str, str]],
    make_client: Callable[..., TestClient],
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path / "data", batch_max_size=16)
    core = ServiceCore(settings, real_embedder)
    try:
        core.index_keeper.sync()
        rows = pick_sneakers(sneaker_rows, 44)  # 11 shoots of each product and label
        added = core.writer.import_rows(
            [
                ImportRow(
                    r["path"],
                    PhotoInput((sneakers_dir / r["path"]).read_bytes(), Path(r["path"]).name),
                    r["brand"],
                    r["product"],
                    r["label"],
                    None,
                    r["group"],
                )
                for r in rows
            ]
        )
        assert added.added == 44
        heads = core.models.refresh_heads()
        assert heads is not None and heads.n_photos == 44
        head = heads.head_for("Nike")
        assert head is not None and head.products == ("air-force-1", "jordan-1") and 0.0 <= head.cv_roc_auc <= 1.0
        client = make_client(settings, core)
        query = next(r for r in sneaker_rows if r["split"] == "query" and r["label"] == "counterfeit")
        result = scan(client, [(sneakers_dir / query["path"]).read_bytes()], listing_id="L-1")
        assert result["authenticity_head"]["version"] == heads.version and result["calibrated"] is True
        reason = next(r for r in result["reasons"] if r["code"] == "authenticity_head")
        assert reason["scope"] == f"Nike/{result['images'][0]['matches'][0]['product']}"
        assert (reason["n_authentic"], reason["n_counterfeit"]) == (22, 22)
        assert reason["cv_roc_auc"] == pytest.approx(head.cv_roc_auc, abs=1e-4)
        assert "uncalibrated" not in codes(result)
        assert 0.0 < result["risk"] < 1.0 and np.isclose(result["risk"], result["images"][0]["head_probability"])
        stored = client.get(f"/v1/scans/{result['scan_id']}").json()
        assert stored["authenticity_head"] == result["authenticity_head"]
    finally:
        core.close()
