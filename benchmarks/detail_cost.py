"""What the authenticity head costs per photo: the detail features' pooling in the forward pass, and the head itself.

    .venv/bin/python benchmarks/detail_cost.py [--model efficientnet-lite0] [--rounds 5]

Two ONNX exports of the same tower, timed in alternating rounds in this run: the service's graph (embedding + detail
features, one pass) against the embedding alone (the graph before the head). Then the head's own cost per photo (a dot
product with the brand's weights and the Platt scaling) on the same features.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import timeit
from pathlib import Path

import numpy as np
import torch
from torch import nn

from embeddings.authenticity import HeadOptions, LabelledPhotos, fit_heads
from embeddings.detail import DetailTower
from embeddings.loading import load_visual
from embeddings.runtimes import OnnxRunner, PixelInput, export_onnx
from embeddings.spec import ModelSpec


class EmbeddingOnly(nn.Module):
    """The tower as it was exported before the head: its embedding, and a 1-wide stand-in for the second output."""

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding: torch.Tensor = self.visual(x)
        return embedding, embedding[:, :1]


def photos_per_second(runner: OnnxRunner, batch: np.ndarray, seconds: float) -> float:
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        runner(batch)
        done += len(batch)
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--pretrained", default="imagenet")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0, help="Per timing, per round.")
    args = parser.parse_args()
    loaded = load_visual(ModelSpec(name=args.model, pretrained=args.pretrained or None, allow_random_weights=not args.pretrained))
    size = loaded.preprocess.size
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        runners: dict[str, OnnxRunner] = {}
        for name, tower in (("embedding only", EmbeddingOnly(loaded.visual)), ("embedding + detail", DetailTower(loaded.visual))):
            path = export_onnx(
                PixelInput(tower, loaded.preprocess.mean, loaded.preprocess.std), size, Path(tmp) / f"{len(runners)}.onnx"
            )
            runners[name] = OnnxRunner(path, threads=1)  # the service's layout on CPU: single-threaded workers
        for batch_size in (1, 16):
            batch = rng.integers(0, 256, size=(batch_size, size, size, 3), dtype=np.uint8)
            rates: dict[str, list[float]] = {name: [] for name in runners}
            for _ in range(args.rounds):  # alternate, so that drift in the machine's speed hits both alike
                for name, runner in runners.items():
                    rates[name].append(photos_per_second(runner, batch, args.seconds))
            medians = {name: float(np.median(values)) for name, values in rates.items()}
            base = medians["embedding only"]
            shown = ", ".join(f"{name} {rate:.1f} photos/s ({rate / base:.3f}x)" for name, rate in medians.items())
            print(f"{args.model} batch {batch_size}, one thread, median of {args.rounds} rounds: {shown}")
        _, details = runners["embedding + detail"](rng.integers(0, 256, size=(64, size, size, 3), dtype=np.uint8))
    labels = np.arange(len(details)) % 2 == 1
    photos = LabelledPhotos(details, labels, tuple(f"g{i % 8}" for i in range(len(details))), ("B",) * len(details),
                            tuple("p" if i % 4 < 2 else "q" for i in range(len(details))), "bench")  # fmt: skip
    head = fit_heads(photos, HeadOptions(min_per_label=2, cv_repeats=1), fingerprint="bench", catalog_revision=0).head_for("B")
    assert head is not None
    row = details[:1]
    seconds = min(timeit.repeat(lambda: head.probability(row, "p"), number=2000, repeat=5)) / 2000
    print(f"head per photo ({details.shape[1]} detail features, product weights): {seconds * 1e6:.1f} us")


if __name__ == "__main__":
    main()
