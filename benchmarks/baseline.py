"""What each benchmark measures the service against: the machine, the photos, and the raw model on them.

`serve.py`, `scan_batch.py`, `index.py` and `gpu.py` print their figures next to a baseline measured in the same run
on the same machine (see benchmarks/README.md): ratios travel between machines, absolute figures do not. The raw
model is timed on the photos decoded and preprocessed exactly as the service does, in the fastest layout this machine
offers, so that a served/raw ratio never flatters the service.
"""

from __future__ import annotations

import os
import platform
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from embeddings import ImageEmbedder, ImageLimits, decode_image
from embeddings.batch_sizing import timed_passes
from embeddings.preprocess import to_pixels

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"


# --- machine and photos -------------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": len(os.sched_getaffinity(0)), "load": os.getloadavg(), "python": platform.python_version()}


def query_photos(data: Path, limit: int | None = None) -> list[Path]:
    """The sneakers query split: real listing-like JPEGs (none of them is in the reference catalog)."""
    manifest = data / "sneakers" / "manifest.csv"
    import csv

    with open(manifest, newline="") as fh:
        paths = [manifest.parent / row["path"] for row in csv.DictReader(fh) if row["split"] == "query"]
    return paths[:limit] if limit else paths


# --- raw model throughput -----------------------------------------------------------------------------------------
def model_inputs(embedder: ImageEmbedder, paths: Sequence[Path]) -> np.ndarray:
    """The photos decoded and preprocessed exactly as the service does (draft decode, one resize), stacked."""
    images = [decode_image(p.read_bytes(), ImageLimits(), embedder.input_size).image for p in paths]
    return to_pixels(images, embedder.preprocess)


def _passes(run: Any, inputs: np.ndarray, batch_size: int, min_seconds: float) -> tuple[int, float]:
    """(photos, seconds) of `run` over `inputs` in batches of `batch_size`, timed as the service times its batch sizes."""
    batches = [inputs[start : start + batch_size] for start in range(0, len(inputs) - batch_size + 1, batch_size)]
    return timed_passes(run, batches, min_seconds)


def raw_throughput(embedder: ImageEmbedder, inputs: np.ndarray, batch_size: int, min_seconds: float = 3.0) -> float:
    """Photos/s of the model's forward pass (plus L2 normalisation) in batches of `batch_size`, one caller."""
    done, seconds = _passes(embedder.embed_batch, inputs, batch_size, min_seconds)
    return done / seconds


def raw_throughput_onnx(
    model_path: Path, inputs: np.ndarray, batch_size: int, streams: int, threads: int, spinning: bool, min_seconds: float = 3.0
) -> float:
    """Photos/s of `streams` ONNX Runtime sessions side by side, each with `threads` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    sessions = [ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"]) for _ in range(streams)]
    results: list[tuple[int, float]] = [(0, 1.0)] * streams

    def work(i: int) -> None:
        session = sessions[i]
        results[i] = _passes(lambda b: session.run(None, {"pixels": b}), inputs, batch_size, min_seconds)

    threads_ = [threading.Thread(target=work, args=(i,)) for i in range(streams)]
    for thread in threads_:
        thread.start()
    for thread in threads_:
        thread.join()
    return sum(done for done, _ in results) / max(seconds for _, seconds in results)


def best_raw(
    embedder: ImageEmbedder, export_dir: Path, inputs: np.ndarray, batch_size: int, repeats: int = 3
) -> tuple[float, str]:
    """The fastest way this machine runs the model at `batch_size`: the service's own session (idle threads sleep),
    one session on all cores with spinning threads (ONNX Runtime's default), or one single-threaded session per core.

    Each is timed `repeats` times, interleaved, and its best run counts: throughput on this (virtual) machine varies
    by tens of percent from one second to the next, and a served/raw ratio must not flatter the service.
    """
    runs: dict[str, Any] = {"onnxruntime as the service runs it": lambda: raw_throughput(embedder, inputs, batch_size, 1.5)}
    cores = len(os.sched_getaffinity(0))
    onnx = sorted(
        export_dir.glob(f"*-{embedder.info.fingerprint[:16]}-uint8-*.onnx")
    )  # the graph of this release: pixels in, embedding and detail out
    if onnx and embedder.info.runtime.startswith("onnx"):
        runs[f"onnxruntime, 1 session x {cores} spinning threads"] = lambda: raw_throughput_onnx(
            onnx[0], inputs, batch_size, 1, cores, True, 1.5
        )
        if cores > 1:
            runs[f"onnxruntime, {cores} sessions x 1 thread"] = lambda: raw_throughput_onnx(
                onnx[0], inputs, batch_size, cores, 1, False, 1.5
            )
    best: dict[str, float] = {}
    for _ in range(repeats):
        for name, run in runs.items():
            best[name] = max(best.get(name, 0.0), run())
    name = max(best, key=lambda k: best[k])
    return best[name], name
