"""Detection quality on ../shared/data: the authenticity head against the kNN vote, out of the box (no calibrate step).

    .venv/bin/python benchmarks/quality.py [--data ../shared/data] [--models efficientnet-lite0,cs-tiny-vit] [--skip-train]

Per model, through the CLI as a user runs it:

1. **Catalog only.** The sneakers reference split (300 photos, with its `group` column) is the catalog; the query
   split (300 photos of other photo shoots) and the distractors are scanned with `evaluate`. Printed: what the service
   answers (the head's calibrated probability) and the kNN vote it had before, each with group-bootstrap intervals and
   the paired difference; ECE of the risk as served; product recall@1 and `not_in_catalog` on unrelated photos.
2. **With `train`.** The query split's shoots are halved (seeded); `train --backbone frozen` on one half gives a
   checkpoint carrying those labelled photos, `model activate` serves heads fitted on catalog + that half, and the
   other half is evaluated; then the halves swap. Both halves' figures are printed beside the catalog-only head on the
   same photos.
3. **Grocery** product recall@1 (catalogue image per product, natural photos), as before the head.

`cs-tiny-vit` has random weights: its figures are meant to be near chance and show only that the machinery runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from cli.main import cli

MODELS = {
    "efficientnet-lite0": ["--model", "efficientnet-lite0", "--pretrained", "imagenet"],
    "cs-tiny-vit": ["--model", "cs-tiny-vit", "--pretrained", "", "--allow-random-weights"],
}
KEYS = ["roc_auc", "tpr_at_fpr_5pct", "tpr_at_fpr_1pct", "ece", "likely_counterfeit_fpr", "needs_review_rate",
        "product_recall_at_1", "unrelated_not_in_catalog_rate"]  # fmt: skip


def invoke(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    if result.exit_code != 0:
        raise SystemExit(f"counterfeit-scan {' '.join(args)} failed:\n{result.output}")
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def split_queries(sneakers: Path, work: Path, seed: int) -> tuple[Path, Path]:
    """Copy the query split into two halves, whole photo shoots (groups) to one side."""
    rows = [r for r in csv.DictReader((sneakers / "manifest.csv").open()) if r["split"] == "query"]
    groups = sorted({r["group"] for r in rows})
    random.Random(seed).shuffle(groups)
    first = set(groups[: len(groups) // 2])
    halves = {"a": [r for r in rows if r["group"] in first], "b": [r for r in rows if r["group"] not in first]}
    paths = []
    for name, chosen in halves.items():
        folder = work / name
        for row in chosen:
            (folder / row["path"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(sneakers / row["path"], folder / row["path"])
        with open(folder / "manifest.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(chosen)
        paths.append(folder / "manifest.csv")
    return paths[0], paths[1]


def fmt(metrics: dict[str, Any], key: str) -> str:
    value, ci = metrics.get(key), (metrics.get("ci") or {}).get(key)
    if value is None:
        return "n/a"
    return f"{value:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci and ci[0] is not None else "")


def vote_line(metrics: dict[str, Any], key: str) -> str:
    figure = metrics["comparison"]["signals"]["knn_vote"][key]
    ci, gap, gap_ci = figure["ci"], figure["served_minus_this"], figure["served_minus_this_ci"]
    text = f"{figure['value']:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
    if gap is not None and gap_ci:
        noise = "inside the noise" if figure["inside_noise"] else "outside the noise"
        text += f"; head - vote {gap:+.3f} [{gap_ci[0]:+.2f}, {gap_ci[1]:+.2f}], {noise}"
    return text


def catalog_only(name: str, flags: list[str], sneakers: Path, distractors: Path, out: Path) -> None:
    invoke("catalog", "import", str(sneakers), "--split", "reference", *flags)
    run = invoke("evaluate", str(sneakers), str(distractors), "--split", "query", "--json", "--out", str(out), *flags)
    heads = run.get("authenticity_head") or {}
    print(f"\n== {name} ({run['model']['weights']}), catalog only: heads {heads.get('scopes')} on {heads.get('n_photos')} photos")
    print(f"{'figure':>30} | served (head, no calibrate step)")
    for key in KEYS:
        print(f"{key:>30} | {fmt(run, key)}")
    for key in ("roc_auc", "tpr_at_fpr_5pct"):
        print(f"{'kNN vote ' + key:>30} | {vote_line(run, key)}")


def with_train(name: str, flags: list[str], sneakers: Path, halves: tuple[Path, Path], work: Path) -> None:
    print(f"\n== {name}: train --backbone frozen on one half of the query shoots, evaluate on the other")
    for trained, held_out in (halves, halves[::-1]):
        data = work / f"{name}-{trained.parent.name}"
        shared = [*flags[: flags.index("--data-dir")], "--data-dir", str(data)]
        invoke("catalog", "import", str(sneakers), "--split", "reference", *shared)
        before = invoke("evaluate", str(held_out), "--json", "--out", str(data / "before"), *shared)
        output = invoke("train", str(trained), "--backbone", "frozen", "--out", str(data / "run"), *shared)
        invoke("model", "activate", output["checkpoint"], *shared)
        after = invoke("evaluate", str(held_out), "--json", "--out", str(data / "after"), *shared)
        print(f"held-out half {held_out.parent.name} ({after['n_queries']} photos): catalog only ROC-AUC "
              f"{fmt(before, 'roc_auc')}, recall@5% {fmt(before, 'tpr_at_fpr_5pct')}; catalog + train ROC-AUC "
              f"{fmt(after, 'roc_auc')}, recall@5% {fmt(after, 'tpr_at_fpr_5pct')}, ECE {fmt(after, 'ece')}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--models", default="efficientnet-lite0,cs-tiny-vit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-train", action="store_true", help="Only the catalog-only and grocery figures.")
    args = parser.parse_args()
    sneakers, distractors, grocery = (args.data / name / "manifest.csv" for name in ("sneakers", "distractors", "grocery"))
    with tempfile.TemporaryDirectory(prefix="cs-quality-") as tmp:
        work = Path(tmp)
        halves = split_queries(sneakers.parent, work / "queries", args.seed)
        for name in args.models.split(","):
            flags = [*MODELS[name], "--data-dir", str(work / name)]
            catalog_only(name, flags, sneakers, distractors, work / name / "reports" / "all")
            if not args.skip_train:
                with_train(name, flags, sneakers, halves, work)
            grocery_flags = [*MODELS[name], "--data-dir", str(work / f"{name}-grocery")]
            invoke("catalog", "import", str(grocery), "--split", "reference", *grocery_flags)
            out = work / name / "reports" / "grocery"
            groceries = invoke("evaluate", str(grocery), "--split", "query", "--json", "--out", str(out), *grocery_flags)
            print(
                f"grocery product recall@1 {fmt(groceries, 'product_recall_at_1')}, @5 {fmt(groceries, 'product_recall_at_5')}"
                f" over {groceries['n_queries']} photos"
            )


if __name__ == "__main__":
    main()
