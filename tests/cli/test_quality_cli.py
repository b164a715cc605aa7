"""`evaluate` and `calibrate` on small slices of the shared photos, with the tiny model (machinery, not quality)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cli.main import cli
from service.core import ServiceCore
from service.scanning.photo_prep import PhotoInput
from tests.helpers import TINY_MODEL_FLAGS, pick_sneakers, shared_set, tiny_settings

REQUIRED_KEYS = {
    "roc_auc", "pr_auc", "tpr_at_fpr_1pct", "tpr_at_fpr_5pct", "ece", "product_recall_at_1", "product_recall_at_5",
    "unrelated_not_in_catalog_rate", "n_queries",
}  # fmt: skip


def run(*args: str, data_dir: Path) -> Result:
    return CliRunner().invoke(cli, [*args, *TINY_MODEL_FLAGS, "--data-dir", str(data_dir)], catch_exceptions=False)


def copy_rows(rows: list[dict[str, str]], source: Path, folder: Path, columns: list[str]) -> Path:
    for row in rows:
        target = folder / row["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / row["path"], target)
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return manifest


@pytest.fixture
def sets(tmp_path: Path, sneakers_dir: Path, sneaker_rows: list[dict[str, str]]) -> dict[str, Path]:
    """A 12-photo catalog, 30 labelled queries (one two-photo listing among them) and 3 unrelated photos."""
    columns = ["path", "brand", "product", "label", "group", "split", "listing_id"]
    reference = pick_sneakers(sneaker_rows, 12, "reference")
    queries = [dict(row) for row in pick_sneakers(sneaker_rows, 30, "query")]
    twin = next(row for row in queries[1:] if row["label"] == queries[0]["label"])
    queries[0]["listing_id"] = twin["listing_id"] = "listing-two-photos"
    distractors = shared_set("distractors")
    unrelated = [{"path": f"images/{name}", "label": "unrelated"} for name in
                 ("skimage_coffee.png", "skimage_rocket.jpg", "sklearn_china.jpg")]  # fmt: skip
    return {
        "reference": copy_rows(reference, sneakers_dir, tmp_path / "reference", columns),
        "queries": copy_rows(queries, sneakers_dir, tmp_path / "queries", columns),
        "unrelated": copy_rows(unrelated, distractors, tmp_path / "unrelated", ["path", "label"]),
    }


def evaluate(data_dir: Path, *manifests: Path, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    result = run("evaluate", *map(str, manifests), "--json", "--bootstrap", "50", "--out", str(data_dir / "report"), *extra,
                 data_dir=data_dir)  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics: dict[str, Any] = json.loads(result.stdout)
    return metrics


def test_evaluate_reports_every_figure(tmp_path: Path, sets: dict[str, Path]) -> None:
    data_dir = tmp_path / "data"
    assert run("catalog", "import", str(sets["reference"]), data_dir=data_dir).exit_code == 0
    metrics = evaluate(data_dir, sets["queries"], sets["unrelated"])
    assert set(metrics) >= REQUIRED_KEYS
    assert metrics["n_queries"] == 29 + 3  # 30 rows, two of them one listing, plus 3 unrelated photos
    assert (metrics["n_authentic"] + metrics["n_counterfeit"], metrics["n_unrelated"]) == (29, 3)
    assert metrics["calibrated"] is False and metrics["model"]["random_weights"] is True
    for key in ("roc_auc", "pr_auc", "product_recall_at_1", "unrelated_not_in_catalog_rate"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["product_recall_at_1"] <= metrics["product_recall_at_5"]
    lines = (data_dir / "report" / "records.jsonl").read_text().splitlines()
    assert len(lines) == metrics["n_queries"] and {"truth", "score", "matches"} <= set(json.loads(lines[0]))
    for name in ("metrics.json", "report.html", "roc.png", "score_histograms.png", "reliability.png", "confusion.png"):
        assert (data_dir / "report" / name).is_file(), name
    assert json.loads((data_dir / "report" / "metrics.json").read_text())["n_queries"] == metrics["n_queries"]
    # 3 photos per product and label: no head, so the service answers the kNN vote and the comparison says it is one.
    assert metrics["authenticity_head"]["scopes"] == [] and metrics["authenticity_head"]["n_photos"] == 12
    vote = metrics["comparison"]["signals"]["knn_vote"]["roc_auc"]
    assert vote["value"] == pytest.approx(metrics["roc_auc"]) and vote["served_minus_this"] == pytest.approx(0.0)
    assert vote["served_minus_this_ci"] == [0.0, 0.0] and vote["inside_noise"] is True
    assert vote["ci"][0] <= vote["value"] <= vote["ci"][1]


def test_evaluate_without_unrelated_rows_says_null(tmp_path: Path, sets: dict[str, Path]) -> None:
    data_dir = tmp_path / "data"
    run("catalog", "import", str(sets["reference"]), data_dir=data_dir)
    metrics = evaluate(data_dir, sets["queries"])
    assert metrics["unrelated_not_in_catalog_rate"] is None and metrics["n_unrelated"] == 0


def test_evaluate_rejects_bad_manifests(tmp_path: Path, sets: dict[str, Path]) -> None:
    data_dir = tmp_path / "data"
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\nnothing.jpg,authentic\n")
    result = CliRunner().invoke(cli, ["evaluate", str(bad), *TINY_MODEL_FLAGS, "--data-dir", str(data_dir)])
    assert result.exit_code != 0 and "no query rows" in result.output
    assert "needs brand and product" in result.output


def test_calibrate_then_the_service_answers_calibrated(tmp_path: Path, sets: dict[str, Path]) -> None:
    data_dir = tmp_path / "data"
    run("catalog", "import", str(sets["reference"]), data_dir=data_dir)
    result = run("calibrate", str(sets["queries"]), str(sets["unrelated"]), "--target-fpr", "0.05", data_dir=data_dir)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["method"] in ("platt", "isotonic")
    assert summary["fit"]["target_fpr"] == 0.05 and summary["fit"]["n"] >= 20
    spec = json.loads(Path(summary["calibrator"]).read_text())
    low, high = spec["thresholds"]["likely_authentic"], spec["thresholds"]["likely_counterfeit"]
    assert low < high

    core = ServiceCore.open(tiny_settings(data_dir))
    try:
        assert core.model.calibrator is not None
        photo = next((sets["queries"].parent / "images").rglob("*.jpg")).read_bytes()
        answer = core.pipeline.scan([PhotoInput(photo)]).model_dump()
        assert answer["calibrated"] is True and answer["calibration"]["method"] == spec["method"]
        assert all(reason["code"] != "uncalibrated" for reason in answer["reasons"])
        risk = answer["risk"]
        assert 0.0 <= risk <= 1.0
        expected = "likely_counterfeit" if risk >= high else "likely_authentic" if risk <= low else "needs_review"
        assert answer["verdict"] == expected or any(r["code"] == "reused_official_photo" for r in answer["reasons"])
    finally:
        core.close()
    calibrated = evaluate(data_dir, sets["queries"])
    raw = evaluate(data_dir, sets["queries"], extra=("--uncalibrated",))
    assert (calibrated["calibrated"], raw["calibrated"]) == (True, False)
    assert calibrated["roc_auc"] is not None and raw["ece"] is not None


def test_calibrator_of_another_model_is_not_used(tmp_path: Path, sets: dict[str, Path]) -> None:
    data_dir = tmp_path / "data"
    run("catalog", "import", str(sets["reference"]), data_dir=data_dir)
    assert run("calibrate", str(sets["queries"]), data_dir=data_dir).exit_code == 0
    path = next((data_dir / "calibration").glob("*.json"))
    spec = json.loads(path.read_text())
    path.write_text(json.dumps({**spec, "model_fingerprint": "0" * 64}))
    core = ServiceCore.open(tiny_settings(data_dir))
    try:
        assert core.model.calibrator is None
    finally:
        core.close()


def test_calibrate_needs_enough_rows(tmp_path: Path, sets: dict[str, Path]) -> None:
    data_dir = tmp_path / "data"
    run("catalog", "import", str(sets["reference"]), data_dir=data_dir)
    result = CliRunner().invoke(cli, ["calibrate", str(sets["unrelated"]), *TINY_MODEL_FLAGS, "--data-dir", str(data_dir)])
    assert result.exit_code != 0 and "cannot calibrate" in result.output
    assert not (data_dir / "calibration").exists() or not list((data_dir / "calibration").glob("*.json"))
