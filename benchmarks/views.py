"""Do local details or mirror images at test time help authenticity? Prints kNN ROC-AUC on the sneakers query split.

    .venv/bin/python benchmarks/views.py [--data ../shared/data] [--views 1x224,1x224m,2x320,3x448,2x288m]

The sneakers reference split is the catalog, the query split the queries, scored with the service's 10-NN vote
(`training.finetune.validation.knn_vote`) using the configured model, untuned. A view set `GxS` embeds the photo's
centre square at S px as G x G overlapping 224 px crops (1x224: the whole photo, as served); a trailing `m` adds
each crop's mirror image. Three ways to score each set: the mean of the crops' embeddings; every query crop voting
among all reference crops, votes averaged; every query crop voting among the reference crops at the same position.
Plain ROC-AUC over all 300 queries (no calibration half), with the recall at 5% FPR.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from embeddings import ImageLimits, decode_image, load_embedder
from embeddings.preprocess import resize_and_crop
from service.config import Settings
from training.finetune.validation import knn_vote

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CROP = 224


def recall_at_fpr(scores: np.ndarray, positive: np.ndarray, fpr: float = 0.05) -> float:
    negatives = np.sort(scores[~positive])[::-1]
    threshold = negatives[int(fpr * len(negatives))]
    return float((scores[positive] > threshold).mean())


def crops(pixels: np.ndarray, grid: int) -> list[np.ndarray]:
    """`grid` x `grid` overlapping CROP px squares covering `pixels` (one square: the pixels themselves)."""
    if grid == 1:
        return [pixels]
    step = (len(pixels) - CROP) // (grid - 1)
    starts = range(0, len(pixels) - CROP + 1, step)
    return [pixels[y : y + CROP, x : x + CROP] for y in starts for x in starts][: grid * grid]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--views", default="1x224,1x224m,2x320,3x448,2x288m")
    args = parser.parse_args()
    root = args.data / "sneakers"
    rows = list(csv.DictReader((root / "manifest.csv").open()))
    catalog = [r for r in rows if r["split"] == "reference"]
    queries = [r for r in rows if r["split"] == "query"]
    settings = Settings()
    embedder = load_embedder(settings.model_spec(), settings.export_dir)
    print(f"model: {embedder.info.architecture}; {len(catalog)} reference photos, {len(queries)} queries")
    photos = {r["path"]: decode_image((root / r["path"]).read_bytes(), ImageLimits()).image for r in rows}
    fake = [r["label"] == "counterfeit" for r in catalog]
    positive = np.array([r["label"] == "counterfeit" for r in queries])

    def embed(subset: list[dict[str, str]], grid: int, size: int, mirror: bool) -> np.ndarray:
        out = []
        for r in subset:
            views = crops(resize_and_crop(photos[r["path"]], size), grid)
            views += [v[:, ::-1] for v in views] if mirror else []
            out.append(embedder.embed_batch(np.ascontiguousarray(np.stack(views))))
        return np.stack(out)  # (photos, views, dim)

    print(
        f"{'views':>8} {'n':>3} {'mean emb AUC':>13} {'R@5%':>5} {'crops pooled':>13} {'R@5%':>5} {'same crop':>10} {'R@5%':>5}"
    )
    for name in args.views.split(","):
        grid_text, _, size_text = name.rstrip("m").partition("x")
        grid, size, mirror = int(grid_text), int(size_text), name.endswith("m")
        started = time.perf_counter()
        ref, qry = embed(catalog, grid, size, mirror), embed(queries, grid, size, mirror)
        n = ref.shape[1]
        ref_mean = ref.mean(1) / np.linalg.norm(ref.mean(1), axis=1, keepdims=True)
        qry_mean = qry.mean(1) / np.linalg.norm(qry.mean(1), axis=1, keepdims=True)
        scored = {
            "mean": knn_vote(ref_mean, fake, qry_mean).scores,
            "pooled": np.mean(
                [
                    knn_vote(ref.reshape(-1, ref.shape[2]), [f for f in fake for _ in range(n)], qry[:, v]).scores
                    for v in range(n)
                ],
                0,
            ),
            "same": np.mean([knn_vote(ref[:, v], fake, qry[:, v]).scores for v in range(n)], 0),
        }
        cells = " ".join(f"{roc_auc_score(positive, s):13.3f} {recall_at_fpr(s, positive):5.2f}" for s in scored.values())
        print(f"{name:>8} {n:3d} {cells}   ({time.perf_counter() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
