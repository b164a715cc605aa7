"""Where the time goes on a GPU machine, for the 5,000 photos/s ViT-B-32 target (run by benchmarks/gpu/run.sh).

    python benchmarks/gpu.py [--data ../shared/data] [--model ViT-B-32] [--batches 32,64,128,256,512]

In one process, on the sneakers query JPEGs:
1. the model alone: photos/s of the service's runner (uint8 pixels from host memory, through the pinned staging
   buffer, fp16 on the device) by batch size;
2. the CPU work before the model, per photo as the scan path does it (scaled JPEG decode, resize to the input size,
   perceptual hash): photos/s with 1 to N threads in this process, and with N processes (no shared GIL);
3. GPU JPEG decoding (nvJPEG through `torchvision.io.decode_jpeg` on the device, batched) followed by the resize on
   the device, against (2): what decoding on the GPU would buy, which the service does not do yet.
Runs on CPU too (1 and 2 only, slowly) so that the script itself is checked where no GPU is lent.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.baseline import DEFAULT_DATA, machine, model_inputs, query_photos
from embeddings import ImageEmbedder, ImageLimits, decode_image, load_embedder
from embeddings.batch_sizing import timed_passes
from embeddings.preprocess import PreprocessSpec
from embeddings.runtimes import available_cores
from service.config import Settings
from service.scanning.photo_prep import prepare_decoded


def model_alone(embedder: ImageEmbedder, inputs: np.ndarray, batches: Sequence[int]) -> dict[int, float]:
    results = {}
    for size in batches:
        batch = np.resize(inputs, (size, *inputs.shape[1:]))  # the photos repeated up to the batch size
        photos, seconds = timed_passes(embedder.embed_batch, [batch], min_seconds=2.0)  # vectors back on the host
        results[size] = photos / seconds
        print(f"  batch {size:4d}: {results[size]:9.1f} photos/s ({embedder.info.runtime})", flush=True)
    return results


def prepare_one(data: bytes, size: int, spec: PreprocessSpec) -> int:
    """What the scan path does on the CPU for one photo before the model (service.scanning.batching.prepare_photos)."""
    return prepare_decoded(decode_image(data, ImageLimits(), size), spec).phash


def prepare_many(datas: Sequence[bytes], size: int, spec: PreprocessSpec) -> int:
    return sum(prepare_one(data, size, spec) & 1 for data in datas)


def cpu_prepare(datas: Sequence[bytes], size: int, spec: PreprocessSpec, workers: Sequence[int]) -> dict[str, float]:
    results = {}
    for kind, count in [("threads", n) for n in workers] + [("processes", workers[-1])]:
        pool: Executor = ThreadPoolExecutor(count) if kind == "threads" else ProcessPoolExecutor(count)
        with pool:
            chunks = [datas[i::count] for i in range(count)]
            list(pool.map(prepare_many, chunks, [size] * count, [spec] * count))  # warm-up (process start, imports)
            started = time.perf_counter()
            for _ in range(2):
                list(pool.map(prepare_many, chunks, [size] * count, [spec] * count))
            rate = 2 * len(datas) / (time.perf_counter() - started)
        results[f"{count} {kind}"] = rate
        print(f"  {count:3d} {kind:9s}: {rate:9.1f} photos/s", flush=True)
    return results


def gpu_decode(datas: Sequence[bytes], size: int, batch: int) -> float:
    """nvJPEG batch decode and an antialiased resize to `size` on the device; photos/s, bytes from host memory."""
    from torchvision.io import decode_jpeg
    from torchvision.transforms.v2.functional import center_crop, resize

    encoded = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    chunk = (encoded * (batch // len(encoded) + 1))[:batch]

    def run(jpegs: list[torch.Tensor]) -> None:
        for image in decode_jpeg(jpegs, device="cuda"):
            side = min(image.shape[-2:])
            center_crop(resize(image, [size * image.shape[-2] // side, size * image.shape[-1] // side], antialias=True), [size])
        torch.cuda.synchronize()  # the work done, not just queued

    photos, seconds = timed_passes(run, [chunk], min_seconds=2.0)
    return photos / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared photo data (../shared/data)")
    parser.add_argument("--model", default="ViT-B-32", help="architecture (random weights: cost only)")
    parser.add_argument("--batches", default="32,64,128,256,512", help="model batch sizes to time")
    parser.add_argument("--workers", default="", help="CPU preparation threads to try (default: 1, 2, 4, ... cores)")
    args = parser.parse_args()

    cores = available_cores()
    default_workers = sorted({1, 2, 4, 8, 16, cores} & set(range(1, cores + 1)))
    workers = [int(w) for w in args.workers.split(",")] if args.workers else default_workers
    print(f"machine: {json.dumps(machine())}; cores {cores}; torch {torch.__version__}; cuda {torch.cuda.is_available()}")
    if torch.cuda.is_available():
        print(f"gpu: {torch.cuda.get_device_name(0)}")
    settings = Settings(model=args.model, pretrained=None, allow_random_weights=True)
    embedder = load_embedder(settings.model_spec())
    paths = query_photos(args.data)
    datas = [p.read_bytes() for p in paths]
    inputs = model_inputs(embedder, paths)
    summary: dict[str, object] = {"model": args.model, "photos": len(paths)}

    print(f"\n1. the model alone ({args.model}, random weights: cost only):", flush=True)
    summary["model_photos_per_s"] = model_alone(embedder, inputs, [int(b) for b in args.batches.split(",")])
    print("\n2. CPU work before the model (decode, resize, hash), per photo as the scan path does it:", flush=True)
    summary["cpu_prepare_photos_per_s"] = cpu_prepare(datas, embedder.input_size, embedder.preprocess, workers)
    if torch.cuda.is_available():
        print("\n3. nvJPEG decode + resize on the device (not used by the service yet):", flush=True)
        try:
            rates = {batch: gpu_decode(datas, embedder.input_size, batch) for batch in (64, 256)}
        except Exception as exc:  # this torchvision's nvJPEG may refuse (a build without it): report, go on
            print(f"  nvJPEG decoding failed: {exc!r}")
            rates = {}
        for batch, rate in rates.items():
            print(f"  batch {batch:4d}: {rate:9.1f} photos/s")
        summary["gpu_decode_photos_per_s"] = rates
    print(f"\nsummary: {json.dumps(summary)}")


if __name__ == "__main__":
    main()
