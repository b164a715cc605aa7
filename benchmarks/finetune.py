"""Fine-tuning EfficientNet-Lite0 on ../shared/data, measured before and after through the serving path.

    .venv/bin/python benchmarks/finetune.py [--data ../shared/data] [--only sneakers|grocery] [--epochs 8] ...

Sneakers: train on the reference split (validation and early stopping on held-out photo GROUPS of that split), then
embed the reference split as the catalog and the query split as queries, with the base model and with best.pt loaded
by `embeddings.load_embedder` (the service's loader and runtime: ONNX Runtime on CPU), and score each query with the
service's similarity-weighted 10-NN vote (softmax, temperature 0.05). Figures come from training.evaluation's
compute_metrics with group-bootstrap 95% intervals. The distractor photos show whether the checkpoint's match threshold
still separates unrelated photos from catalog photos.

Grocery: the 8 natural photos of each of the 31 products are split (seeded) 4/4; the model trains on one half plus
the 31 catalogue images (classes = product, no validation, fixed epochs), and product recall@1 is measured on the
other half against the catalogue images alone.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import random
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from embeddings import ImageLimits, ModelSpec, decode_image, load_embedder
from embeddings.loading import load_visual, save_checkpoint
from embeddings.preprocess import PreprocessSpec
from training.evaluation.metrics import compute_metrics
from training.finetune import FinetuneConfig, TrainImage, finetune, read_training_data
from training.finetune.validation import FIGURES, knn_vote, vote_records

BASE = ModelSpec(name="efficientnet-lite0", pretrained="imagenet", runtime="auto")


def embed(spec: ModelSpec, images: Sequence[Path], export_dir: Path) -> tuple[np.ndarray, float | None, str]:
    """Embed photos as the service does (decode with draft size, load_embedder's runtime); also its match threshold."""
    embedder = load_embedder(spec, export_dir)
    limits = ImageLimits()
    decoded = [decode_image(path.read_bytes(), limits, embedder.input_size).image for path in images]
    return embedder.embed_images(decoded), embedder.default_match_threshold, embedder.info.short_id


def base_at(size: int | None, work: Path) -> ModelSpec | None:
    """The untuned base model fed `size`-pixel inputs (None when that is its own size): separates the gain of the
    input size from the gain of training."""
    base = load_visual(BASE)
    if size is None or size == base.preprocess.size:
        return None
    base.preprocess = PreprocessSpec(size, base.preprocess.mean, base.preprocess.std, base.preprocess.interpolation)
    path = work / f"base-{size}.pt"
    save_checkpoint(path, base.architecture, base, {"note": f"untuned {BASE.name}/{BASE.pretrained} at {size} px"})
    return ModelSpec(checkpoint=path)


def retrieval_figures(
    spec: ModelSpec, catalog: Sequence[TrainImage], queries: Sequence[TrainImage], export_dir: Path, unrelated: Sequence[Path]
) -> dict[str, Any]:
    """Catalog vs queries through the serving path: the 10-NN vote figures, plus the match threshold check."""
    vectors, threshold, model = embed(spec, [i.path for i in catalog] + [q.path for q in queries] + list(unrelated), export_dir)
    n_cat, n_qry = len(catalog), len(queries)
    cat, qry, unr = vectors[:n_cat], vectors[n_cat : n_cat + n_qry], vectors[n_cat + n_qry :]
    vote = knn_vote(cat, [i.label == "counterfeit" for i in catalog], qry)
    metrics = compute_metrics(vote_records(catalog, queries, vote), n_bootstrap=1000, seed=0)
    out: dict[str, Any] = {"model": model, **{k: metrics[k] for k in FIGURES}, "ci": {k: metrics["ci"][k] for k in FIGURES}}
    out["n_queries"] = metrics["n_queries"]
    if threshold is not None:
        out["match_threshold"] = threshold
        out["queries_in_catalog_rate"] = float((vote.similarities[:, 0] >= threshold).mean())
        if len(unr):
            best_unrelated = (unr @ cat.T).max(axis=1)
            out["unrelated_not_in_catalog_rate"] = float((best_unrelated < threshold).mean())
            out["unrelated_best_similarity_max"] = float(best_unrelated.max())
    return out


def sneakers(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    manifest = args.data / "sneakers" / "manifest.csv"
    reference = read_training_data([manifest], "reference").images
    queries = read_training_data([manifest], "query").images
    unrelated = [row.path for row in read_training_data_any(args.data / "distractors" / "manifest.csv")]
    config = make_config(args, val_fraction=args.val_fraction)
    started = time.perf_counter()
    result = finetune(config, BASE, [manifest], "reference", work / "sneakers-run")
    seconds = time.perf_counter() - started
    before = retrieval_figures(BASE, reference, queries, work / "onnx", unrelated)
    resized = base_at(config.image_size, work)
    same_size = retrieval_figures(resized, reference, queries, work / "onnx", unrelated) if resized else None
    after = retrieval_figures(ModelSpec(checkpoint=result.best_checkpoint), reference, queries, work / "onnx", unrelated)
    return {
        "experiment": "sneakers: train on reference split, evaluate query split against reference split",
        "config": config.as_dict(),
        "before": before,
        "before_at_training_size": same_size,
        "after": after,
        "training": {
            "wall_seconds": round(seconds, 1),
            **result.report["time"],
            "best_epoch": result.report["best_epoch"],
            "epochs_trained": result.report["epochs_trained"],
            "stopped_early": result.report.get("stopped_early"),
            "memory": result.report["memory"],
            "validation_before": pick(result.report["validation_before"]),
            "validation_after": pick(result.report["validation_after"]),
            "out_dir": str(result.out_dir),
        },
    }


def read_training_data_any(manifest: Path) -> list[Any]:
    """Rows of a manifest whatever their label (the distractors are `unrelated` and have no brand)."""
    from reference_catalog import read_manifest

    return list(read_manifest(manifest, labels=("unrelated",), require_brand=False).rows)


def grocery(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    source = args.data / "grocery"
    rows = list(csv.DictReader((source / "manifest.csv").open(encoding="utf-8")))
    by_product: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        if row["split"] == "query":
            by_product[row["product"]].append(row)
    rng = random.Random(args.seed)
    train_rows = [row for row in rows if row["split"] == "reference"]
    test_rows = []
    for product in sorted(by_product):
        photos = sorted(by_product[product], key=lambda r: r["path"])
        rng.shuffle(photos)
        half = len(photos) // 2
        train_rows += photos[:half]
        test_rows += photos[half:]
    folder = work / "grocery"
    for row in rows:
        (folder / row["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / row["path"], folder / row["path"])
    for name, chosen in (("train", train_rows), ("test", test_rows)):
        with open(folder / f"{name}.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=["path", "brand", "product", "label", "group"], extrasaction="ignore")
            writer.writeheader()
            # Each photo is its own group (the natural photos are distinct shots); this run has no validation split.
            writer.writerows({**row, "group": row["path"]} for row in chosen)
    config = make_config(args, val_fraction=0.0, class_key="product", epochs=args.grocery_epochs)
    started = time.perf_counter()
    result = finetune(config, BASE, [folder / "train.csv"], None, work / "grocery-run")
    seconds = time.perf_counter() - started
    catalog = [i for i in read_training_data([folder / "train.csv"]).images if "/reference/" in str(i.path)]
    queries = read_training_data([folder / "test.csv"]).images
    before = retrieval_figures(BASE, catalog, queries, work / "onnx", [])
    resized = base_at(config.image_size, work)
    same_size = retrieval_figures(resized, catalog, queries, work / "onnx", []) if resized else None
    after = retrieval_figures(ModelSpec(checkpoint=result.best_checkpoint), catalog, queries, work / "onnx", [])
    keep = ("model", "product_recall_at_1", "product_recall_at_5", "n_queries")

    def kept(figures: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if figures is None else {k: figures[k] for k in keep} | {"ci": {k: figures["ci"][k] for k in keep[1:3]}}

    return {
        "experiment": "grocery: train on 31 catalogue images + 4 photos per product, recall@1 of the other 4 vs catalogue",
        "config": config.as_dict(),
        "before": kept(before),
        "before_at_training_size": kept(same_size),
        "after": kept(after),
        "training": {
            "wall_seconds": round(seconds, 1),
            **result.report["time"],
            "epochs_trained": result.report["epochs_trained"],
            "memory": result.report["memory"],
            "out_dir": str(result.out_dir),
        },
    }


def pick(figures: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if figures is None else {k: figures.get(k) for k in ("roc_auc", "tpr_at_fpr_1pct", "product_recall_at_1")}


def training_options(parser: argparse.ArgumentParser) -> None:
    """The fine-tuning settings these benchmarks share (FinetuneConfig's, as `make_config` reads them)."""
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--samples-per-class", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--image-size", type=int, default=288)
    parser.add_argument("--unfreeze", default="3")
    parser.add_argument("--bn", choices=["frozen", "train"], default="frozen")
    parser.add_argument("--loss", choices=["supcon", "triplet"], default="supcon")
    parser.add_argument("--temperature", type=float, default=0.1)
    parser.add_argument("--anchor", type=float, default=1.0)
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)


def make_config(args: argparse.Namespace, **overrides: Any) -> FinetuneConfig:
    values: dict[str, Any] = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "samples_per_class": args.samples_per_class,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "image_size": args.image_size,
        "unfreeze": args.unfreeze if args.unfreeze == "all" else int(args.unfreeze),
        "bn": args.bn,
        "loss": args.loss,
        "temperature": args.temperature,
        "anchor": args.anchor,
        "seed": args.seed,
        "patience": args.patience,
        "num_workers": args.workers,
        "show_progress": sys.stderr.isatty(),
    }
    return FinetuneConfig(**{**values, **overrides})


SIDES = {"before": "base model", "before_at_training_size": "base at training size", "after": "fine-tuned"}


def table(result: dict[str, Any], keys: Sequence[str], sides: dict[str, str] = SIDES) -> str:
    """Figures by row, one column per side of `result` present (named by `sides`), intervals in brackets."""
    present = [side for side in sides if result.get(side)]
    lines = [f"{'figure':>22} | " + " | ".join(f"{sides[side]:>22}" for side in present)]
    for key in keys:
        cells = []
        for side in present:
            value, interval = result[side].get(key), result[side].get("ci", {}).get(key)
            cell = "n/a" if value is None else (f"{value}" if isinstance(value, int) else f"{value:.3f}")
            if interval:
                cell += f" [{interval[0]:.2f}, {interval[1]:.2f}]"
            cells.append(f"{cell:>22}")
        lines.append(f"{key:>22} | " + " | ".join(cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--only", choices=["sneakers", "grocery"])
    parser.add_argument("--grocery-epochs", type=int, default=5)
    training_options(parser)
    parser.add_argument("--out", type=Path, help="Keep the runs and write results.json here (default: a temp dir).")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="cs-finetune-") as tmp:
        work = args.out or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        results = []
        if args.only in (None, "sneakers"):
            result = sneakers(args, work)
            results.append(result)
            print(f"\n== {result['experiment']}\n" + table(result, ["n_queries", *FIGURES]))
            print(json.dumps({"training": result["training"]}, indent=1))
        if args.only in (None, "grocery"):
            result = grocery(args, work)
            results.append(result)
            print(f"\n== {result['experiment']}\n" + table(result, ["n_queries", "product_recall_at_1", "product_recall_at_5"]))
            print(json.dumps({"training": result["training"]}, indent=1))
        (work / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
