"""`counterfeit-scan train`: labelled photos that are not references, carried by a checkpoint for the authenticity
head (frozen base weights by default, or a fine-tuned tower). Tiny random-weights model: machinery, not quality."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

from cli.main import cli
from embeddings import ImageLimits, ModelSpec, decode_image, load_embedder
from embeddings.authenticity import LabelledPhotos
from embeddings.loading import load_visual, save_checkpoint
from tests import imaging
from tests.helpers import TINY_MODEL_FLAGS

TINY = ModelSpec(name="cs-tiny-vit", pretrained=None, allow_random_weights=True, runtime="torch")
FIELDS = ["path", "brand", "product", "label", "group"]


def write_manifest(folder: Path, rows: list[dict[str, str]], name: str = "manifest.csv") -> Path:
    manifest = folder / name
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def photo_rows(folder: Path, first_seed: int = 0, groups: int = 3, shots: int = 2) -> list[dict[str, str]]:
    """JPEGs of one brand: 2 products x 2 labels x `groups` shoots x `shots` photos, each with its manifest row."""
    rows = []
    seed = first_seed
    for product in ("alpha", "beta"):
        for label in ("authentic", "counterfeit"):
            for g in range(groups):
                for s in range(shots):
                    path = f"images/{product}-{label}-g{g}-{s}-{seed}.jpg"
                    (folder / path).parent.mkdir(parents=True, exist_ok=True)
                    (folder / path).write_bytes(imaging.jpeg(seed, size=(80, 80)))
                    seed += 1
                    rows.append({"path": path, "brand": "Acme", "product": product, "label": label,
                                 "group": f"{product}-{label}-shoot{g}-{first_seed}"})  # fmt: skip
    return rows


def train(*args: str) -> Result:
    return CliRunner().invoke(cli, ["train", *args, *TINY_MODEL_FLAGS, "--device", "cpu"])


@pytest.fixture(scope="module")
def takedowns(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]]]:
    """24 good photos, one without a group, and three rows that cannot be used (an undecodable photo, a missing file,
    an unknown label) plus a repeat of a photo's bytes under another name."""
    folder = tmp_path_factory.mktemp("takedowns")
    rows = photo_rows(folder)
    (folder / "images/loose.jpg").write_bytes(imaging.jpeg(500, size=(80, 80)))
    rows.append({"path": "images/loose.jpg", "brand": "Acme", "product": "alpha", "label": "counterfeit", "group": ""})
    (folder / "images/broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "images/copy.jpg").write_bytes((folder / rows[0]["path"]).read_bytes())
    bad = [
        {"path": "images/broken.jpg", "brand": "Acme", "product": "alpha", "label": "counterfeit", "group": "x"},
        {"path": "images/missing.jpg", "brand": "Acme", "product": "alpha", "label": "counterfeit", "group": "x"},
        {"path": rows[1]["path"], "brand": "Acme", "product": "alpha", "label": "maybe", "group": "x"},
        {"path": "images/copy.jpg", "brand": "Acme", "product": "alpha", "label": "authentic", "group": "y"},
    ]
    return write_manifest(folder, rows + bad), rows


@pytest.fixture(scope="module")
def frozen_run(takedowns: tuple[Path, list[dict[str, str]]], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    manifest, _ = takedowns
    out = tmp_path_factory.mktemp("run") / "out"
    result = train(str(manifest), "--out", str(out), "--data-dir", str(out.parent / "data"))
    assert result.exit_code == 0, result.output
    summary: dict[str, Any] = json.loads(result.stdout)
    summary["stderr"] = result.stderr
    return summary


def test_frozen_checkpoint_carries_the_photos_with_their_labels_and_shoots(
    frozen_run: dict[str, Any], takedowns: tuple[Path, list[dict[str, str]]]
) -> None:
    manifest, rows = takedowns
    checkpoint = Path(frozen_run["checkpoint"])
    assert checkpoint.is_file() and checkpoint.name == "checkpoint.pt" and frozen_run["backbone"] == "frozen"
    assert frozen_run["next_step"] == f"counterfeit-scan model activate {checkpoint}"
    loaded = load_visual(ModelSpec(checkpoint=checkpoint))
    photos = loaded.head_photos
    assert photos is not None and len(photos) == len(rows) == 25
    assert photos.is_counterfeit.tolist() == [row["label"] == "counterfeit" for row in rows]
    expected_groups = [row["group"] or f"image:{(manifest.parent / row['path']).resolve()}" for row in rows]
    assert list(photos.groups) == expected_groups
    assert set(photos.brands) == {"Acme"} and list(photos.products) == [row["product"] for row in rows]

    counts = frozen_run["head_photos"]
    assert (counts["added"], counts["carried_from_base"], counts["photos"]) == (25, 0, 25)
    assert (counts["authentic"], counts["counterfeit"], counts["groups"]) == (12, 13, 13)
    # the broken photo, the missing file, the unknown label and the repeated bytes are reported, not fatal
    assert frozen_run["skipped_rows"] == 4
    stderr = frozen_run["stderr"]
    assert "broken.jpg" in stderr and "missing.jpg" in stderr and "maybe" in stderr and "same photo as" in stderr
    assert "no 'group'" in stderr
    head = frozen_run["head_cross_validation"]["heads"]["Acme"]
    assert (head["n_authentic"], head["n_counterfeit"]) == (12, 13) and 0 <= head["cv_roc_auc"] <= 1
    report = json.loads((checkpoint.parent / "report.json").read_text())
    assert len(report["skipped_rows"]) == 4 and report["checkpoint"] == str(checkpoint)


def test_frozen_checkpoint_has_the_base_weights_and_features_the_service_would_compute(
    frozen_run: dict[str, Any], takedowns: tuple[Path, list[dict[str, str]]], tmp_path: Path
) -> None:
    manifest, rows = takedowns
    checkpoint = Path(frozen_run["checkpoint"])
    base = load_embedder(TINY, tmp_path)
    served = load_embedder(ModelSpec(checkpoint=checkpoint, runtime="torch"), tmp_path)  # what `model activate` loads
    assert served.info.fingerprint == base.info.fingerprint == frozen_run["fingerprint"]
    assert base.head_photos is None
    photos = served.head_photos
    assert photos is not None and photos.layout == served.detail_layout and photos.features.shape[1] == served.detail_dim
    images = [
        decode_image((manifest.parent / row["path"]).read_bytes(), ImageLimits(), served.input_size).image for row in rows[:3]
    ]
    expected = served.embed_images_with_detail(images).details
    np.testing.assert_allclose(photos.features[:3], expected, atol=2e-2, rtol=1e-2)


def test_a_base_checkpoint_keeps_its_photos_and_new_ones_are_added_once(
    frozen_run: dict[str, Any], takedowns: tuple[Path, list[dict[str, str]]], tmp_path: Path
) -> None:
    manifest, rows = takedowns
    more = photo_rows(tmp_path, first_seed=1000, groups=1, shots=1)
    (tmp_path / "images/again.jpg").write_bytes((manifest.parent / rows[5]["path"]).read_bytes())
    again = {**rows[5], "path": "images/again.jpg"}
    second = write_manifest(tmp_path, [*more, again])
    out = tmp_path / "second"
    result = train(str(second), "--checkpoint", frozen_run["checkpoint"], "--out", str(out), "--data-dir", str(tmp_path / "d"))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["head_photos"]["added"], summary["head_photos"]["carried_from_base"]) == (4, 25)
    assert summary["skipped_rows"] == 1 and "already carried by the base checkpoint" in result.stderr
    assert summary["fingerprint"] == frozen_run["fingerprint"]
    photos = load_visual(ModelSpec(checkpoint=out / "checkpoint.pt")).head_photos
    assert photos is not None and len(photos) == 29 and list(photos.groups[25:]) == [row["group"] for row in more]


def test_no_usable_photo_fails_clearly_and_writes_no_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    rows = []
    for i in range(3):
        (tmp_path / f"bad/{i}.jpg").write_bytes(imaging.truncated_jpeg(i)[:40] if i else b"plain text, not a photo")
        rows.append({"path": f"bad/{i}.jpg", "brand": "Acme", "product": "alpha", "label": "counterfeit", "group": f"g{i}"})
    out = tmp_path / "out"
    result = train(str(write_manifest(tmp_path, rows)), "--out", str(out), "--data-dir", str(tmp_path / "d"))
    assert result.exit_code == 1, result.output
    assert "none of the 3 labelled photos could be used" in result.output and "manifest.csv line 2: 0.jpg" in result.output
    assert not (out / "checkpoint.pt").exists()

    labels = [{**row, "label": "fake"} for row in rows]
    result = train(str(write_manifest(tmp_path, labels, "labels.csv")), "--out", str(out), "--data-dir", str(tmp_path / "d"))
    assert result.exit_code == 1 and "no usable labelled photos" in result.output and "unknown label" in result.output
    assert not (out / "checkpoint.pt").exists()


def test_fine_tuning_options_need_backbone_finetune(takedowns: tuple[Path, list[dict[str, str]]], tmp_path: Path) -> None:
    manifest, _ = takedowns
    result = train(str(manifest), "--epochs", "2", "--workers", "0", "--out", str(tmp_path / "out"))
    assert result.exit_code == 2 and "--epochs, --workers" in result.output and "--backbone finetune" in result.output
    result = train("--backbone", "frozen", "--resume", str(tmp_path))
    assert result.exit_code == 2 and "--backbone finetune" in result.output
    assert not (tmp_path / "out").exists()


def test_finetune_backbone_from_the_environment_attaches_photos_embedded_with_the_new_weights(
    takedowns: tuple[Path, list[dict[str, str]]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest, rows = takedowns
    manifest = write_manifest(manifest.parent, rows, "usable.csv")  # fine-tuning stops at an undecodable photo
    monkeypatch.setenv("COUNTERFEIT_SCAN_TRAIN_BACKBONE", "finetune")
    out = tmp_path / "run"
    result = train(str(manifest), "--epochs", "1", "--batch-size", "8", "--samples-per-class", "2", "--unfreeze", "1",
                   "--val-fraction", "0", "--workers", "0", "--out", str(out), "--data-dir", str(tmp_path / "d"))  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["backbone"] == "finetune" and summary["head"]["checkpoint"] == str(out / "best.pt")
    assert summary["head"]["head_photos"]["added"] == 25
    tuned = load_embedder(ModelSpec(checkpoint=out / "best.pt", runtime="torch"), tmp_path)
    assert tuned.info.fingerprint == summary["fingerprint"] != load_embedder(TINY, tmp_path).info.fingerprint
    photos = tuned.head_photos
    assert (
        photos is not None and len(photos) == 25 and photos.is_counterfeit.tolist() == [r["label"] == "counterfeit" for r in rows]
    )
    image = decode_image((manifest.parent / rows[0]["path"]).read_bytes(), ImageLimits(), tuned.input_size).image
    np.testing.assert_allclose(photos.features[0], tuned.embed_images_with_detail([image]).details[0], atol=2e-2, rtol=1e-2)
    report = json.loads((out / "report.json").read_text())
    assert report["head"]["head_photos"]["photos"] == 25


def test_base_photos_of_another_detail_layout_are_dropped_with_a_warning(
    takedowns: tuple[Path, list[dict[str, str]]], tmp_path: Path
) -> None:
    manifest, rows = takedowns
    old = LabelledPhotos(
        np.zeros((2, 3), np.float32), np.array([True, False]), ("a", "b"), ("Acme",) * 2, ("alpha",) * 2, "old-v0"
    )
    loaded = load_visual(TINY)
    save_checkpoint(tmp_path / "old.pt", loaded.architecture, loaded, {}, head_photos=old)
    usable = write_manifest(manifest.parent, rows[:4], "first-four.csv")
    out = tmp_path / "out"
    result = train(str(usable), "--checkpoint", str(tmp_path / "old.pt"), "--out", str(out), "--data-dir", str(tmp_path / "d"))
    assert result.exit_code == 0, result.output
    assert "layout 'old-v0'" in result.stderr and "dropped" in result.stderr
    assert json.loads(result.stdout)["head_photos"]["carried_from_base"] == 0
    photos = load_visual(ModelSpec(checkpoint=out / "checkpoint.pt")).head_photos
    assert photos is not None and len(photos) == 4 and photos.layout != "old-v0"


def test_takedowns_alone_are_all_counterfeit_and_still_make_a_checkpoint(
    takedowns: tuple[Path, list[dict[str, str]]], tmp_path: Path
) -> None:
    """A brand's past takedowns are all fakes: no head can be fitted on them alone, but the service's can (the catalog
    brings the authentic photos), so the checkpoint is written and the figures say why there are none."""
    manifest, rows = takedowns
    fakes = write_manifest(manifest.parent, [row for row in rows if row["label"] == "counterfeit"], "fakes.csv")
    out = tmp_path / "out"
    result = train(str(fakes), "--out", str(out), "--data-dir", str(tmp_path / "d"))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["head_photos"]["counterfeit"] == 13 and summary["head_photos"]["authentic"] == 0
    assert summary["head_cross_validation"]["heads"] == {} and "Acme" in summary["head_cross_validation"]["without_a_head"]
    assert "every photo is labelled counterfeit" in result.stderr
    photos = load_visual(ModelSpec(checkpoint=out / "checkpoint.pt")).head_photos
    assert photos is not None and photos.is_counterfeit.all() and len(photos) == 13
