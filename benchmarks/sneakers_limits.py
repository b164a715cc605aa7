"""What limits authenticity on the sneakers photos: label noise, or the number of photo sessions in the catalog?

    .venv/bin/python benchmarks/sneakers_limits.py [--data ../shared/data] [--repeats 5]

With the configured model, untuned (the offline default: EfficientNet-Lite0, ImageNet), all 600 sneakers photos are
embedded once, as the service embeds them. Then:
- label noise: photo pairs from different photo groups that are near-identical (cosine above 0.9, or perceptual
  hashes within 8 bits), counted across labels (the same photo sold as authentic and as counterfeit) and within;
- catalog size: ROC-AUC of the service's 10-NN vote on the query photos, with the catalog grown from a share of the
  reference split's 51 groups up to those 51 plus every *other* query group (each query group is scored against a
  catalog without itself), averaged over `--repeats` seeded draws.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from embeddings import ImageLimits, decode_image, load_embedder
from embeddings.perceptual_hash import hamming_distances, perceptual_hash
from service.config import Settings
from training.finetune.validation import knn_vote

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    root = args.data / "sneakers"
    rows = list(csv.DictReader((root / "manifest.csv").open()))
    settings = Settings()
    embedder = load_embedder(settings.model_spec(), settings.export_dir)
    images = [decode_image((root / r["path"]).read_bytes(), ImageLimits(), embedder.input_size).image for r in rows]
    vectors = embedder.embed_images(images)
    hashes = np.array([perceptual_hash(image) for image in images], dtype=np.int64)
    label = np.array([r["label"] for r in rows])
    group = np.array([r["group"] for r in rows])
    split = np.array([r["split"] for r in rows])
    fake = label == "counterfeit"

    first, second = np.triu_indices(len(rows), 1)
    other_group = group[first] != group[second]
    cross = other_group & (label[first] != label[second])
    same = other_group & (label[first] == label[second])
    cosine = np.einsum("ij,ij->i", vectors[first], vectors[second])
    bits = np.concatenate([hamming_distances(hashes[i + 1 :], int(hashes[i])) for i in range(len(rows) - 1)])
    near = (cosine > 0.9) | (bits <= 8)
    print(f"{embedder.info.short_id}: {len(rows)} photos, {len(set(group))} groups")
    print(
        f"near-identical pairs of photos from different groups: {int((near & cross).sum())} across labels, "
        f"{int((near & same).sum())} within a label; highest cosine across labels {cosine[cross].max():.3f}"
    )
    print(f"groups holding both labels: {sum(len(set(label[group == g])) > 1 for g in set(group))}")

    queries = np.flatnonzero(split == "query")
    reference = np.flatnonzero(split == "reference")
    ref_groups = sorted(set(group[reference]))
    query_groups = sorted(set(group[queries]))
    rng = np.random.default_rng(0)
    print("\nuntuned 10-NN ROC-AUC on the query photos by catalog size (groups):")
    for ref_share, extra_share in ((0.25, 0), (0.5, 0), (0.75, 0), (1, 0), (1, 0.25), (1, 0.5), (1, 0.75), (1, 1)):
        aucs = []
        for _ in range(1 if (ref_share, extra_share) in ((1, 0), (1, 1)) else args.repeats):
            kept = set(rng.choice(ref_groups, round(ref_share * len(ref_groups)), replace=False))
            scores = np.zeros(len(queries))
            for g in query_groups:
                others = [q for q in query_groups if q != g]
                kept_extra = set(rng.choice(others, round(extra_share * len(others)), replace=False))
                catalog = np.flatnonzero(np.isin(group, list(kept | kept_extra)))
                mine = group[queries] == g
                scores[mine] = knn_vote(vectors[catalog], list(fake[catalog]), vectors[queries[mine]]).scores
            aucs.append(roc_auc_score(fake[queries], scores))
        size = round(ref_share * len(ref_groups)) + round(extra_share * (len(query_groups) - 1))
        print(f"  {size:3d} groups: {np.mean(aucs):.3f}  (draws: {', '.join(f'{a:.3f}' for a in aucs)})", flush=True)


if __name__ == "__main__":
    main()
