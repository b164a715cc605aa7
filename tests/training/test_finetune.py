"""Fine-tuning with the tiny random-weights model on generated photos: machinery, not quality."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cli.train import train
from embeddings import ModelSpec, load_embedder
from embeddings.embedder import model_fingerprint
from embeddings.loading import load_visual
from service.scanning.scoring import Match, PhotoEvidence, ScoringParams, score_photo
from training.finetune import (
    FinetuneConfig,
    FinetuneResult,
    ResumeError,
    finetune,
    knn_vote,
    read_training_data,
    split_by_group,
)
from training.finetune.layers import apply_unfreeze, set_train_mode
from training.finetune.losses import make_loss
from training.finetune.optim import Stepper, make_optimizer
from training.finetune.outputs import read_metrics_log

TINY = ModelSpec(name="cs-tiny-vit", pretrained=None, allow_random_weights=True)
CLASSES = [("alpha", "authentic"), ("alpha", "counterfeit"), ("beta", "authentic"), ("beta", "counterfeit")]
GROUPS_PER_CLASS = 3
PHOTOS_PER_GROUP = 2


def photo(class_number: int, group: int, shot: int) -> Image.Image:
    """A photo whose colour and stripes depend on its class, layout on its group, and noise on the shot."""
    rng = np.random.default_rng(1000 * class_number + 10 * group + shot)
    hue = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40]][class_number], dtype=np.float64)
    yy, xx = np.mgrid[0:80, 0:80]
    stripes = ((xx * (class_number + 1) + yy * (group + 1)) // 8 % 2)[..., None] * 60.0
    pixels = hue + stripes + rng.normal(0, 20, (80, 80, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB")


def write_set(folder: Path, with_group: bool = True) -> Path:
    """24 JPEGs: 4 classes (2 products x 2 labels) x 3 groups x 2 shots, and their manifest."""
    rows = []
    for c, (product, label) in enumerate(CLASSES):
        for g in range(GROUPS_PER_CLASS):
            for s in range(PHOTOS_PER_GROUP):
                path = f"images/{product}-{label}-g{g}-{s}.jpg"
                (folder / path).parent.mkdir(parents=True, exist_ok=True)
                photo(c, g, s).save(folder / path, "JPEG", quality=90)
                rows.append({"path": path, "brand": "Acme", "product": product, "label": label,
                             "group": f"{product}-{label}-g{g}" if with_group else "", "split": "reference"})  # fmt: skip
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "brand", "product", "label", "group", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def config(**overrides: object) -> FinetuneConfig:
    values: dict[str, object] = {
        "epochs": 2,
        "batch_size": 8,
        "samples_per_class": 2,
        "lr": 1e-3,
        "unfreeze": "all",
        "val_fraction": 0.34,
        "num_workers": 0,
        "show_progress": False,
        "device": "cpu",
    }
    return FinetuneConfig(**{**values, **overrides})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_set(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="module")
def full_run(manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> FinetuneResult:
    """An uninterrupted two-epoch run."""
    return finetune(config(), TINY, [manifest], "reference", tmp_path_factory.mktemp("full"))


def test_group_split_keeps_groups_whole_and_every_class_in_training(manifest: Path) -> None:
    images = read_training_data([manifest], "reference").images
    for seed in range(5):
        train_rows, val_rows = split_by_group(images, 0.34, seed, "product_label")
        train_groups = {images[i].group for i in train_rows}
        val_groups = {images[i].group for i in val_rows}
        assert train_groups and val_groups and not train_groups & val_groups
        assert sorted(train_rows + val_rows) == list(range(len(images)))
        assert {images[i].class_name("product_label") for i in train_rows} == {f"Acme/{p}/{lb}" for p, lb in CLASSES}
    assert split_by_group(images, 0.0, 0, "product_label") == (list(range(len(images))), [])


def test_rows_without_group_are_their_own_group_with_a_warning(tmp_path: Path) -> None:
    data = read_training_data([write_set(tmp_path, with_group=False)], "reference")
    assert len({image.group for image in data.images}) == len(data.images) == 24
    assert data.warnings and "near-duplicates" in data.warnings[0]


@pytest.mark.parametrize("loss", ["supcon", "triplet"])
def test_loss_goes_down_on_a_fixed_batch(manifest: Path, loss: str) -> None:
    torch.manual_seed(0)
    loaded = load_visual(TINY)
    visual = loaded.visual
    apply_unfreeze(visual, "all")
    set_train_mode(visual, "all", "frozen")
    images = read_training_data([manifest], "reference").images[::3]
    pixels = torch.from_numpy(np.stack([np.asarray(Image.open(i.path).resize((64, 64)), dtype=np.float32) / 255 for i in images]))
    pixels = (pixels.permute(0, 3, 1, 2) - 0.5) / 0.25
    labels = torch.tensor([CLASSES.index((i.product, i.label)) for i in images])
    cfg = config(loss=loss)
    loss_fn = make_loss(cfg, [0, 0, 1, 1])
    optimizer = make_optimizer(visual, 1e-3, 0.0)
    stepper = Stepper(visual, loss_fn, optimizer, None, torch.amp.GradScaler("cpu", enabled=False), torch.device("cpu"))
    losses = [stepper.step(pixels, labels) for _ in range(6)]
    assert losses[-1] < losses[0] * 0.9, losses


def test_checkpoint_round_trips_and_differs_from_the_base(full_run: FinetuneResult) -> None:
    out = full_run.out_dir
    for name in ("best.pt", "last.pt", "metrics.jsonl", "training_curves.png", "report.json"):
        assert (out / name).is_file(), name
    base = load_visual(TINY)
    tuned = load_visual(ModelSpec(checkpoint=out / "best.pt"))
    assert tuned.architecture == "cs-tiny-vit" and tuned.preprocess == base.preprocess
    base_print = model_fingerprint(base.architecture, base.visual, base.preprocess)
    tuned_print = model_fingerprint(tuned.architecture, tuned.visual, tuned.preprocess)
    assert tuned_print != base_print and tuned_print == full_run.report["fingerprint"]

    meta = torch.load(out / "best.pt", map_location="cpu", weights_only=True)["metadata"]
    assert meta["base_model"]["fingerprint"] == base_print and meta["base_model"]["architecture"] == "cs-tiny-vit"
    assert len(meta["data"]["manifests"][0]["sha256"]) == 64
    assert meta["hyperparameters"]["epochs"] == 2 and meta["hyperparameters"]["image_size"] == 64
    assert [e["epoch"] for e in meta["epochs"]] == [0, 1, 2] and meta["best_epoch"] in (1, 2) and meta["finished"]
    assert meta["code_version"]["version"] and meta["created"]

    embedder = load_embedder(ModelSpec(checkpoint=out / "best.pt", runtime="torch"))  # what the service does
    vectors = embedder.embed_images([photo(0, 0, 0), photo(3, 1, 1)])
    assert vectors.shape == (2, embedder.info.dim) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)

    log = read_metrics_log(out)
    assert [e["epoch"] for e in log] == [0, 1, 2] and log[0]["val"]["roc_auc"] is not None
    report = json.loads((out / "report.json").read_text())
    assert report["validation_before"]["ci"]["roc_auc"] is not None and report["memory"]["max_rss_mib"] > 0


def test_resume_after_an_interruption_gives_the_uninterrupted_weights(
    full_run: FinetuneResult, manifest: Path, tmp_path: Path
) -> None:
    interrupted = finetune(config(), TINY, [manifest], "reference", tmp_path, stop_after_epoch=1)
    assert not interrupted.report["finished"] and interrupted.report["epochs_trained"] == 1
    resumed = finetune(config(), TINY, [manifest], "reference", tmp_path, resume=True)
    assert resumed.report["finished"] and resumed.report["epochs_trained"] == 2
    expected = torch.load(full_run.out_dir / "last.pt", map_location="cpu", weights_only=True)
    got = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=True)
    assert got["epoch"] == 2
    for key, tensor in expected["model"].items():
        assert torch.equal(tensor, got["model"][key]), key
    assert resumed.report["fingerprint"] == full_run.report["fingerprint"]
    with pytest.raises(ResumeError, match="lr"):
        finetune(config(lr=0.5), TINY, [manifest], "reference", tmp_path, resume=True)


def test_knn_vote_equals_the_service_vote() -> None:
    rng = np.random.default_rng(3)
    catalog = rng.normal(size=(30, 8)).astype(np.float32)
    catalog /= np.linalg.norm(catalog, axis=1, keepdims=True)
    queries = catalog[:5] + rng.normal(scale=0.3, size=(5, 8)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    fake = [bool(i % 3 == 0) for i in range(30)]
    vote = knn_vote(catalog, fake, queries, k=10, temperature=0.05)
    params = ScoringParams(match_threshold=-1.0, counterfeit_threshold=0.8, authentic_threshold=0.2, vote_temperature=0.05)
    for q in range(5):
        matches = [
            Match(str(j), "Acme", "p", "counterfeit" if fake[j] else "authentic", float(s))
            for j, s in zip(vote.neighbours[q], vote.similarities[q], strict=True)
        ]
        assert score_photo(PhotoEvidence(matches), params).score == pytest.approx(vote.scores[q], abs=1e-6)


def test_train_command_end_to_end(manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [str(manifest), "--backbone", "finetune", "--split", "reference", "--epochs", "1", "--batch-size", "8",
            "--samples-per-class", "2", "--unfreeze", "1", "--val-fraction", "0.34", "--workers", "0", "--out", str(out),
            "--data-dir", str(tmp_path / "d"), "--model", "cs-tiny-vit", "--pretrained", "", "--allow-random-weights",
            "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(train, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["best_checkpoint"] == str(out / "best.pt") and summary["epochs_trained"] == 1
    assert (
        summary["validation_before"]["roc_auc"] is not None and summary["train"]["groups"] + summary["validation"]["groups"] == 12
    )
    for name in ("best.pt", "last.pt", "metrics.jsonl", "training_curves.png", "report.json"):
        assert (out / name).is_file(), name
    again = CliRunner().invoke(train, ["--resume", str(out), "--epochs", "2", "--workers", "0"], catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["epochs_trained"] == 2
    bad = CliRunner().invoke(train, ["--resume", str(out), "--lr", "0.9"])
    assert bad.exit_code != 0 and "lr" in bad.output
    missing = CliRunner().invoke(train, [])
    assert missing.exit_code != 0 and "MANIFEST" in missing.output
