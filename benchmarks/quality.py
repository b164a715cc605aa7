"""Quality figures on ../shared/data: the plain kNN vote baseline vs the product's scoring, raw and calibrated.

    .venv/bin/python benchmarks/quality.py [--data ../shared/data] [--models efficientnet-lite0,cs-tiny-vit]

Per model: the sneakers reference split is the catalog; the query split is divided by `group` (seeded) into a
calibration half and a test half, so that no photo session is in both; distractors are the unrelated photos.
Printed: the plain similarity-weighted 10-NN vote (linear weights) on the test half, the product's raw score, and the
calibrated risk with its verdict bands; then grocery product recall@1 (catalogue image per product, natural photos).
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

import numpy as np
from click.testing import CliRunner
from sklearn.metrics import roc_auc_score

from cli.main import cli

MODELS = {
    "efficientnet-lite0": ["--model", "efficientnet-lite0", "--pretrained", "imagenet"],
    "cs-tiny-vit": ["--model", "cs-tiny-vit", "--pretrained", "", "--allow-random-weights"],
}
KEYS = ["roc_auc", "pr_auc", "tpr_at_fpr_1pct", "tpr_at_fpr_5pct", "likely_counterfeit_precision", "likely_counterfeit_fpr",
        "needs_review_rate", "ece", "product_recall_at_1", "product_recall_at_5", "unrelated_not_in_catalog_rate"]  # fmt: skip


def invoke(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    if result.exit_code != 0:
        raise SystemExit(f"counterfeit-scan {' '.join(args)} failed:\n{result.output}")
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def split_queries(sneakers: Path, work: Path, seed: int) -> tuple[Path, Path]:
    """Copy the query split into a calibration half and a test half, whole groups to one side."""
    rows = [r for r in csv.DictReader((sneakers / "manifest.csv").open()) if r["split"] == "query"]
    groups = sorted({r["group"] for r in rows})
    random.Random(seed).shuffle(groups)
    calibration_groups = set(groups[: len(groups) // 2])
    halves = {"calibration": [r for r in rows if r["group"] in calibration_groups],
              "test": [r for r in rows if r["group"] not in calibration_groups]}  # fmt: skip
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


def plain_vote_auc(report_dir: Path, k: int = 10) -> float:
    """ROC-AUC of sum(sim * is_fake) / sum(sim) over the k nearest references, from the report's scan evidence."""
    records = [json.loads(line) for line in (report_dir / "records.jsonl").read_text().splitlines()]
    truth, votes = [], []
    for record in records:
        if record["truth"] == "unrelated":
            continue
        matches = record["matches"][:k]
        sims = np.array([m["similarity"] for m in matches])
        fake = np.array([m["label"] == "counterfeit" for m in matches])
        votes.append(float((sims * fake).sum() / sims.sum()) if len(sims) else 0.5)
        truth.append(record["truth"] == "counterfeit")
    return float(roc_auc_score(truth, votes))


def fmt(metrics: dict[str, Any], key: str) -> str:
    value, ci = metrics.get(key), (metrics.get("ci") or {}).get(key)
    if value is None:
        return "n/a"
    return f"{value:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci and ci[0] is not None else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--models", default="efficientnet-lite0,cs-tiny-vit")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sneakers, distractors, grocery = (args.data / name / "manifest.csv" for name in ("sneakers", "distractors", "grocery"))
    with tempfile.TemporaryDirectory(prefix="cs-quality-") as tmp:
        work = Path(tmp)
        calibration, test = split_queries(sneakers.parent, work / "queries", args.seed)
        for name in args.models.split(","):
            flags = [*MODELS[name], "--data-dir", str(work / name)]
            invoke("catalog", "import", str(sneakers), "--split", "reference", *flags)
            runs: dict[str, dict[str, Any]] = {}
            out = work / name / "reports"
            runs["all queries, raw"] = invoke("evaluate", str(sneakers), str(distractors), "--split", "query", "--json",
                                              "--out", str(out / "all"), *flags)  # fmt: skip
            runs["test half, raw"] = invoke("evaluate", str(test), str(distractors), "--json", "--out", str(out / "raw"), *flags)
            fitted = invoke("calibrate", str(calibration), *flags)
            runs["test half, calibrated"] = invoke("evaluate", str(test), str(distractors), "--json", "--out", str(out / "cal"),
                                                   *flags)  # fmt: skip
            print(
                f"\n== {name} ({runs['all queries, raw']['model']['weights']}); calibrator: {fitted['method']}, "
                f"bands {json.dumps(fitted['thresholds'])}"
            )
            for label, path in (("all queries", out / "all"), ("test half", out / "raw")):
                print(f"plain 10-NN vote ROC-AUC, {label}: {plain_vote_auc(path):.3f}")
            header = f"{'figure':>30} | " + " | ".join(f"{run:>24}" for run in runs)
            print(header + "\n" + "-" * len(header))
            for key in ["n_queries", *KEYS]:
                print(f"{key:>30} | " + " | ".join(f"{fmt(m, key) if key != 'n_queries' else m[key]:>24}" for m in runs.values()))
            grocery_flags = [*MODELS[name], "--data-dir", str(work / f"{name}-grocery")]
            invoke("catalog", "import", str(grocery), "--split", "reference", *grocery_flags)
            groceries = invoke(
                "evaluate", str(grocery), "--split", "query", "--json", "--out", str(out / "grocery"), *grocery_flags
            )
            print(
                f"grocery product recall@1 {fmt(groceries, 'product_recall_at_1')}, @5 {fmt(groceries, 'product_recall_at_5')}"
                f" over {groceries['n_queries']} photos"
            )


if __name__ == "__main__":
    main()
