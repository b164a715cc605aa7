"""Bulk scanning throughput (`counterfeit-scan scan-batch`) against the raw model, on the same real photos.

    .venv/bin/python benchmarks/scan_batch.py [--repeat 4] [--photos-per-listing 1] [--batch-size 16] [--workers 0]
    .venv/bin/python benchmarks/scan_batch.py --engine ray [--actors 1,2,1x2] [--rounds 1]

Imports the sneakers reference split as the catalog, writes a manifest of the sneakers query-split JPEGs (repeated
`--repeat` times under new listing ids), runs the real CLI in a subprocess and reads its summary (photos/s of the
scanning itself, model loading excluded). Then, with nothing else running, the raw model forward throughput on the
same photos at the same batch size (the fastest ONNX Runtime configuration). Prints bulk/raw last.

With `--engine ray`, the same manifest is also scanned by `scan-batch --engine ray` once per `--actors` count, each
run starting its own private Ray: Ray's start-up and the actors' (each imports the service and loads the model) are
printed apart from the steady rate once the first actor is up (photos / from then to the last block's end, as the
actors' clocks tell); ratios ray/local and the scaling from the first actor count to the others come last.
`--rounds N` runs them all (local included) N times, alternating, and keeps the best of each (a shared machine).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.baseline import DEFAULT_DATA, best_raw, machine, model_inputs, query_photos
from benchmarks.serve import prepare_data_dir
from benchmarks.service_process import CLI
from embeddings import load_embedder
from service.config import Settings


def write_listings(path: Path, photos: list[Path], repeat: int, per_listing: int) -> int:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "listing_id"])
        count = 0
        for round_ in range(repeat):
            for i, photo in enumerate(photos):
                writer.writerow([str(photo.resolve()), f"r{round_}-l{i // per_listing}"])
                count += 1
    return count


def run_scan_batch(command: list[str], out: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run one scan-batch: print what it cost, return its summary."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([*command, "--out", str(out)], env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"scan-batch failed:\n{done.stdout}\n{done.stderr[-4000:]}")
    summary: dict[str, Any] = json.loads(done.stdout)
    lines = sum(1 for _ in out.open())
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    print(
        f"  {summary['photos']} photos in {summary['seconds']:.1f} s of scanning ({wall:.1f} s with start-up): "
        f"{summary['photos_per_s']:.1f} photos/s; {lines} lines; {cpu * 1000 / summary['photos']:.2f} CPU ms per photo; "
        f"peak RSS {after.ru_maxrss / 1024:.0f} MB"
    )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--work-dir", type=Path, help="data directory to reuse between runs (default: a temporary one)")
    parser.add_argument("--repeat", type=int, default=4, help="passes over the query photos (new listing ids each time)")
    parser.add_argument("--photos-per-listing", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16, help="model batch (scan-batch --batch-size)")
    parser.add_argument("--workers", type=int, default=0, help="decoding threads (scan-batch --workers; 0: one per core)")
    parser.add_argument("--engine", choices=["local", "ray"], default="local", help="ray: also scan-batch --engine ray")
    parser.add_argument(
        "--actors", default="1,2,1x2", help="with --engine ray: runs of N actors (of C CPUs each: NxC), comma-separated"
    )
    parser.add_argument("--rounds", type=int, default=1, help="with --engine ray: rounds of all runs, the best of each kept")
    args = parser.parse_args()

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="cs-bench-bulk-"))
    env = {**os.environ}
    print(f"machine: {json.dumps(machine())}")
    prepare_data_dir(work, args.data, env)
    photos = query_photos(args.data)
    runs = Path(tempfile.mkdtemp(prefix="cs-bench-bulk-run-"))
    manifest = runs / "listings.csv"
    rows = write_listings(manifest, photos, args.repeat, args.photos_per_listing)
    command = [*CLI, "scan-batch", str(manifest), "--data-dir", str(work)]
    command += ["--batch-size", str(args.batch_size), "--workers", str(args.workers)]
    print(f"scan-batch: {rows} photos ({len(photos)} query JPEGs x {args.repeat}), {args.photos_per_listing} per listing")
    summary = run_scan_batch(command, runs / "results.jsonl", env)

    # With Ray, the runs alternate round after round and the best of each is kept: a machine that others share
    # slows whichever run it is in, and the best is the one least disturbed.
    on_ray: dict[str, dict[str, Any]] = {}
    for round_ in range(args.rounds if args.engine == "ray" else 0):
        if round_:
            print(f"round {round_ + 1}: scan-batch (local)")
            again = run_scan_batch(command, runs / f"results-{round_}.jsonl", env)
            summary = max(summary, again, key=lambda x: float(x["photos_per_s"]))
        for spec in args.actors.split(","):
            actors, _, cpus = spec.partition("x")
            flags = ["--engine", "ray", "--actors", actors, "--actor-cpus", cpus or "1"]
            print(f"scan-batch {' '.join(flags)} (a private Ray on this machine):")
            ray_summary = run_scan_batch([*command, *flags], runs / f"ray-{spec}-{round_}.jsonl", env)
            print(
                f"    Ray start {ray_summary['ray_start_s']:.1f} s, index snapshot {ray_summary['prepare_s']:.1f} s, "
                f"first actor ready {ray_summary['actors_ready_s']:.1f} s into the run, "
                f"then {ray_summary['steady_photos_per_s']:.1f} photos/s"
            )
            name = f"{actors} actor(s) x {cpus or '1'} CPU"
            best = on_ray.get(name, ray_summary)
            on_ray[name] = max(best, ray_summary, key=lambda x: float(x["steady_photos_per_s"]))

    settings = Settings(data_dir=work)
    embedder = load_embedder(settings.model_spec(), settings.export_dir)
    inputs = model_inputs(embedder, photos)
    raw, how = best_raw(embedder, settings.export_dir, inputs, args.batch_size)
    print(f"raw model forward pass, batch {args.batch_size}: {raw:.1f} photos/s ({how})")
    print(f"load while measuring: {os.getloadavg()}")
    shutil.rmtree(runs, ignore_errors=True)
    if args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    local = summary["photos_per_s"]
    for name, ray_summary in on_ray.items():
        whole, steady = ray_summary["photos_per_s"], ray_summary["steady_photos_per_s"]
        print(
            f"ray/local, {name}: {whole:.1f} / {local:.1f} = {whole / local:.3f} with the actors' start-up; "
            f"{steady:.1f} / {local:.1f} = {steady / local:.3f} once one is up"
        )
    if len(on_ray) > 1:
        (first, base), *others = on_ray.items()
        for name, ray_summary in others:
            ratio = ray_summary["steady_photos_per_s"] / base["steady_photos_per_s"]
            print(f"ray scaling, {name} / {first}: {ratio:.3f} once up")
    print(f"bulk/raw: {local:.1f} / {raw:.1f} = {local / raw:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
