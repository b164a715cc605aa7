"""How large a model batch should be: measured on the machine, because it is not always "as large as possible".

On a GPU, photos/s rise with the batch up to hundreds. On a CPU a small model can run slower per photo in a large
batch (its activations stop fitting in cache): EfficientNet-Lite0 on 2 cores embeds fewer photos/s at batch 16 than
at batch 1, and the service scanned more photos/s with batches capped at 2 than at 16 (see benchmarks/README.md,
section "Served throughput", "Then batch size measured at start").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence, Sized
from typing import TypeVar

import numpy as np

from embeddings.embedder import ImageEmbedder

CPU_BATCH_CEILING = 16
GPU_BATCH_CEILING = 256
Batch = TypeVar("Batch", bound=Sized)  # pixels (n, h, w, 3), or a list of n encoded photos


def batch_ceiling(embedder: ImageEmbedder) -> int:
    """The largest batch the measurement tries: 16 on CPU (where small batches win, above), 256 on a GPU (where
    ViT-B-32 at its target of 5,000 photos/s needs batches in the hundreds: 16 would cap it far below)."""
    return GPU_BATCH_CEILING if embedder.info.runtime.startswith("torch-cuda") else CPU_BATCH_CEILING


def timed_passes(
    run: Callable[[Batch], object], batches: Sequence[Batch], min_seconds: float, min_photos: int = 0
) -> tuple[int, float]:
    """(photos, seconds): `run` over `batches` in turn, after one warm-up call (the runtime allocates for the shape),
    until at least `min_seconds` have passed and `min_photos` photos have run."""
    run(batches[0])
    done, started = 0, time.perf_counter()
    while True:
        for batch in batches:
            run(batch)
            done += len(batch)
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds and done >= min_photos:
            return done, elapsed


def batch_rates(embedder: ImageEmbedder, limit: int, min_seconds: float = 0.1) -> dict[int, float]:
    """Photos/s of `embedder` at batch 1, 2, 4, ... up to `limit`, each timed over at least `limit` photos."""
    size = embedder.input_size
    pixels = np.random.default_rng(0).integers(0, 256, (limit, size, size, 3), dtype=np.uint8)
    rates: dict[int, float] = {}
    for n in sorted({*(1 << k for k in range(limit.bit_length())), limit}):
        done, seconds = timed_passes(embedder.embed_batch, [pixels[:n]], min_seconds, min_photos=limit)
        rates[n] = done / seconds
    return rates


def largest_fast_batch(rates: dict[int, float], tolerance: float = 0.9) -> int:
    """The largest batch that runs at `tolerance` of the best photos/s or better: batching amortises the per-batch
    costs around the model (search, records), but not at any price in model speed."""
    best = max(rates.values())
    return max(n for n, rate in rates.items() if rate >= tolerance * best)
