"""Does fine-tuning gain from more photo sessions? Sneakers, trained on 51 reference groups against 51 + half the query's.

    .venv/bin/python benchmarks/finetune_growth.py [--data ../shared/data] [--seed 0] [--out DIR] [finetune.py options]

The query split's photo groups are halved (seeded, each label halved on its own): half A joins the catalog, half B
is scored. Three models score B against the same catalog (reference split + A) with the service's 10-NN vote:
the untuned base, a model fine-tuned on the reference split alone (51 groups, as benchmarks/finetune.py trains), and
one fine-tuned on the reference split + A (about 75 groups). Training settings are finetune.py's (its options).
The difference between the last two is what more labelled sessions buy when fine-tuning, with everything else equal.
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from embeddings import ModelSpec
from training.finetune import TrainImage, finetune, read_training_data
from training.finetune.validation import FIGURES

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.finetune import BASE, make_config, retrieval_figures, table, training_options


def halve_groups(images: Sequence[TrainImage], seed: int) -> tuple[set[str], set[str]]:
    """The query groups in two halves, each label's groups halved separately."""
    rng = random.Random(seed)
    first: set[str] = set()
    second: set[str] = set()
    for label in sorted({image.label for image in images}):
        groups = sorted({image.group for image in images if image.label == label})
        rng.shuffle(groups)
        first.update(groups[: len(groups) // 2])
        second.update(groups[len(groups) // 2 :])
    return first, second


def write_manifest(rows: Sequence[dict[str, str]], source: Path, keep: set[str], path: Path) -> Path:
    """The rows of `source` whose group is in `keep`, split 'train', their photos copied beside `path` (a manifest's
    paths stay inside its folder)."""
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=["path", "brand", "product", "label", "group", "split"])
        writer.writeheader()
        for row in rows:
            if f"{source.resolve()}::{row['group']}" in keep:  # read_training_data's group ids
                copy = path.parent / row["path"]
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source.parent / row["path"], copy)
                writer.writerow({**row, "split": "train"})
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    training_options(parser)
    parser.add_argument("--out", type=Path, help="Keep the runs and write results.json here (default: a temp dir).")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    manifest = args.data / "sneakers" / "manifest.csv"
    rows = list(csv.DictReader(manifest.open()))
    reference = read_training_data([manifest], "reference").images
    queries = read_training_data([manifest], "query").images
    added, scored = halve_groups(queries, args.seed)
    catalog = [*reference, *(q for q in queries if q.group in added)]
    held_out = [q for q in queries if q.group in scored]
    ref_groups = {image.group for image in reference}
    print(f"catalog: {len(catalog)} photos ({len(ref_groups)} + {len(added)} groups)")
    print(f"scored: {len(held_out)} photos ({len(scored)} groups)")

    with tempfile.TemporaryDirectory(prefix="cs-finetune-growth-") as tmp:
        work = args.out or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        config = make_config(args, val_fraction=args.val_fraction)
        results: dict[str, Any] = {"before": retrieval_figures(BASE, catalog, held_out, work / "onnx", [])}
        for name, groups in (("after, 51 groups", ref_groups), ("after, 51 + A groups", ref_groups | added)):
            train = write_manifest(rows, manifest, groups, work / f"train-{len(groups)}.csv")
            started = time.perf_counter()
            run = finetune(config, BASE, [train], "train", work / f"run-{len(groups)}")
            seconds = time.perf_counter() - started
            results[name] = retrieval_figures(ModelSpec(checkpoint=run.best_checkpoint), catalog, held_out, work / "onnx", [])
            results[name]["training_seconds"] = round(seconds, 1)
            results[name]["best_epoch"] = run.report["best_epoch"]
        sides = {"before": "base model", **{name: name for name in results if name != "before"}}
        print("\n" + table(results, ["n_queries", *FIGURES], sides))
        (work / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
