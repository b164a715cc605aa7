"""Does the configured model find a photo from its crops and mirror image? Prints top-1 rates over ../shared/data.

    .venv/bin/python benchmarks/self_retrieval.py [--data ../shared/data] [--model efficientnet-lite0 --pretrained imagenet]

Every photo of every set is indexed; each is then queried as a centre crop (80% and 60% of each side), a horizontal
mirror, and a mirrored 80% crop. A query succeeds when the original photo is the top match; a hit on a pre-augmented copy
of the same photo (same `group` in the sneakers manifest) is counted separately.
"""

from __future__ import annotations

import argparse
import csv
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from embeddings import ImageLimits, ModelSpec, VectorIndex, decode_image, load_embedder


def centre_crop(image: Image.Image, fraction: float) -> Image.Image:
    w, h = image.size
    cw, ch = round(w * fraction), round(h * fraction)
    left, top = (w - cw) // 2, (h - ch) // 2
    return image.crop((left, top, left + cw, top + ch))


VARIANTS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "crop 80%": lambda im: centre_crop(im, 0.8),
    "crop 60%": lambda im: centre_crop(im, 0.6),
    "mirror": ImageOps.mirror,
    "mirror + crop 80%": lambda im: centre_crop(ImageOps.mirror(im), 0.8),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--pretrained", default="imagenet")
    args = parser.parse_args()
    manifests = sorted(args.data.glob("*/manifest.csv"))
    if not manifests:
        raise SystemExit(f"no manifests under {args.data}")
    rows = [(m.parent / row["path"], row.get("group") or "") for m in manifests for row in csv.DictReader(m.open())]
    paths = [path for path, _ in rows]
    # Sneaker photos were uploaded pre-augmented (SOURCES.md): a hit on another image of the same group is a sibling.
    groups = [group or str(path) for path, group in rows]
    embedder = load_embedder(ModelSpec(name=args.model, pretrained=args.pretrained))
    # Decode at full size: crops of a draft-decoded JPEG would not be fair to the model.
    images = [decode_image(p.read_bytes(), ImageLimits()).image for p in paths]
    started = time.perf_counter()
    vectors = embedder.embed_images(images)
    elapsed = time.perf_counter() - started
    index = VectorIndex(embedder.info.dim, embedder.info.fingerprint)
    index.add(np.arange(len(paths), dtype=np.int64), vectors)
    print(
        f"model {embedder.info.short_id} ({embedder.info.runtime}); {len(paths)} photos from "
        f"{', '.join(m.parent.name for m in manifests)}; embedded at {len(paths) / elapsed:.1f} photos/s"
    )
    for name, transform in VARIANTS.items():
        queries = embedder.embed_images([transform(im) for im in images])
        hits = index.search(queries, 2)
        top1 = np.array([row[0].id == i for i, row in enumerate(hits)])
        sibling = np.array([groups[row[0].id] == groups[i] for i, row in enumerate(hits)])
        sims = np.array([row[0].similarity for row in hits])
        print(
            f"{name:>18}: original is top match for {top1.mean():.1%} ({top1.sum()}/{len(top1)}); "
            f"original or same-group sibling {sibling.mean():.1%}; median top similarity {np.median(sims):.3f}"
        )


if __name__ == "__main__":
    main()
