"""Bounded load test on loopback: mixed scans, uploads and deletes against the real service; then catalog vs index.

    .venv/bin/python benchmarks/load.py [--duration 30] [--requests N] [--concurrency 8] [--mix 80,15,5] [--tiny]
                                        [--reference-limit N] [--generated] [--data-dir DIR] [--json OUT]

Starts `counterfeit-scan serve` in a subprocess on a fresh data directory (default model: EfficientNet-Lite0; `--tiny`:
the test model with random weights) whose catalog is imported first from the sneakers reference split in
../shared/data (or from generated JPEGs with `--generated`, or when the shared data is missing), with an admin key
made by `counterfeit-scan keys create`. Then an httpx async client keeps `--concurrency` requests in flight for
`--duration` seconds (or `--requests` in all), each one a scan (a sneakers query photo, none of which is in the
catalog), an upload (a photo not yet in the catalog) or a delete (of an image this run uploaded), drawn by `--mix`.
A 429 (backpressure) is counted and not retried. Prints, per operation: requests, answers by status, errors,
latency p50/p95/p99 and rate; then checks that the catalog and the index agree: while serving (/readyz index size
vs the catalog's total, and the catalog vs what the run acknowledged), and after a clean stop, by loading the saved
index file as a restart would find it and comparing its id set and revision with the catalog's. Exits 1 if anything
disagrees or any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.service_process import CLI, REPO, cli_json, free_port, wait_ready

SHARED = REPO.parent / "shared" / "data"
TINY_FLAGS = ["--model", "cs-tiny-vit", "--pretrained", "", "--allow-random-weights"]
OPERATIONS = ("scan", "upload", "delete")


# --- photos -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Photo:
    data: bytes
    brand: str
    product: str
    label: str


def generated_photo(seed: int, size: int = 224) -> bytes:
    """A distinct JPEG per seed: a gradient with per-seed colours and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    base = rng.integers(0, 256, size=3)
    pixels = np.stack([(base[c] + (xx * (c + 1) + yy * (3 - c)) * (1 + seed % 5)) % 256 for c in range(3)], axis=-1)
    pixels = (pixels + rng.integers(-30, 30, size=pixels.shape)).clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, "JPEG", quality=88)
    return buffer.getvalue()


def sneaker_rows(split: str) -> list[dict[str, str]]:
    manifest = SHARED / "sneakers" / "manifest.csv"
    with open(manifest, newline="", encoding="utf-8") as fh:
        return [row for row in csv.DictReader(fh) if row["split"] == split]


def write_generated_manifest(folder: Path, count: int) -> Path:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = ["path,brand,product,label"]
    for i in range(count):
        (folder / "images" / f"{i:05d}.jpg").write_bytes(generated_photo(i))
        lines.append(f"images/{i:05d}.jpg,Acme,model-{i % 4},{'counterfeit' if i % 3 == 0 else 'authentic'}")
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest


def write_limited_manifest(folder: Path, rows: Sequence[dict[str, str]]) -> Path:
    """A manifest of some sneakers reference rows, their photos copied under `folder`."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = ["path,brand,product,label"]
    for i, row in enumerate(rows):
        target = folder / "images" / f"{i:05d}{Path(row['path']).suffix}"
        shutil.copyfile(SHARED / "sneakers" / row["path"], target)
        lines.append(f"images/{target.name},{row['brand']},{row['product']},{row['label']}")
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest


def photo_pools(generated: bool) -> tuple[list[bytes], list[Photo]]:
    """Photos to scan and photos to upload: the sneakers query split (not in the catalog) or generated ones."""
    if generated:
        scans = [generated_photo(100_000 + i) for i in range(64)]
        uploads = [Photo(generated_photo(200_000 + i), "Acme", f"model-{i % 4}", "authentic") for i in range(2000)]
        return scans, uploads
    rows = sneaker_rows("query")
    scans = [(SHARED / "sneakers" / row["path"]).read_bytes() for row in rows[::2]]
    uploads = [
        Photo((SHARED / "sneakers" / row["path"]).read_bytes(), row["brand"], row["product"], row["label"]) for row in rows[1::2]
    ]
    # more uploads than the query split has: generated photos of an extra product
    uploads += [Photo(generated_photo(200_000 + i), "Nike", "load-test", "authentic") for i in range(2000)]
    return scans, uploads


# --- the service ------------------------------------------------------------------------------------------------------
def child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COUNTERFEIT_SCAN_")}
    env.update(extra)
    return env


class Service:
    """`counterfeit-scan serve` in a subprocess on a free loopback port, its log in the data directory."""

    def __init__(self, data_dir: Path, model_flags: Sequence[str], env: dict[str, str]) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log_path = data_dir / "serve.log"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [*CLI, "serve", "--data-dir", str(data_dir), "--port", self.url.rsplit(":", 1)[1], *model_flags],
                env=env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = 300) -> dict[str, Any]:
        return wait_ready(self.process, self.url, self.log_tail, timeout)

    def stop(self) -> int:
        self.process.terminate()
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(60)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


# --- load ---------------------------------------------------------------------------------------------------------------
@dataclass
class Tally:
    statuses: Counter[str] = field(default_factory=Counter)
    latencies_ms: dict[str, list[float]] = field(default_factory=lambda: {op: [] for op in OPERATIONS})
    uploaded: list[str] = field(default_factory=list)  # acknowledged (201), not deleted by this run
    created: set[str] = field(default_factory=set)
    deleted: set[str] = field(default_factory=set)
    substituted: int = 0  # deletes drawn while this run had nothing of its own left to delete: sent as scans
    unexpected: list[str] = field(default_factory=list)


EXPECTED = {"scan": {200}, "upload": {201}, "delete": {200}}


async def one_request(
    client: httpx.AsyncClient, op: str, rng: random.Random, scans: Sequence[bytes], uploads: list[Photo], tally: Tally
) -> None:
    if op == "delete" and not tally.uploaded:
        op = "scan"
        tally.substituted += 1
    started = time.perf_counter()
    victim = ""
    try:
        if op == "scan":
            files = [("images", ("listing.jpg", rng.choice(scans), "image/jpeg"))]
            response = await client.post("/v1/scan", files=files)
        elif op == "upload":
            photo = uploads.pop()
            form = {"brand": photo.brand, "product": photo.product, "label": photo.label}
            response = await client.post("/v1/catalog/images", files={"file": ("ref.jpg", photo.data, "image/jpeg")}, data=form)
        else:
            victim = tally.uploaded.pop(rng.randrange(len(tally.uploaded)))
            response = await client.delete(f"/v1/catalog/images/{victim}")
    except httpx.HTTPError as exc:
        tally.statuses[f"{op} {type(exc).__name__}"] += 1
        tally.unexpected.append(f"{op}: {type(exc).__name__}: {exc}")
        return
    elapsed_ms = (time.perf_counter() - started) * 1000
    tally.latencies_ms[op].append(elapsed_ms)
    tally.statuses[f"{op} {response.status_code}"] += 1
    if op == "upload" and response.status_code == 201:
        image_id = response.json()["image_id"]
        tally.uploaded.append(image_id)
        tally.created.add(image_id)
    elif op == "delete" and response.status_code == 200:
        tally.deleted.add(victim)
    if response.status_code not in EXPECTED[op] and response.status_code != 429:
        tally.unexpected.append(f"{op} {response.status_code}: {response.text[:200]}")


async def run_load(
    url: str,
    headers: dict[str, str],
    scans: Sequence[bytes],
    uploads: list[Photo],
    mix: Sequence[float],
    concurrency: int,
    duration_s: float,
    max_requests: int | None,
    seed: int,
) -> tuple[Tally, float]:
    tally = Tally()
    rng = random.Random(seed)
    sent = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120, limits=limits) as client:
        started = time.perf_counter()
        deadline = started + duration_s

        async def worker() -> None:
            nonlocal sent
            while time.perf_counter() < deadline and (max_requests is None or sent < max_requests) and uploads:
                sent += 1
                await one_request(client, rng.choices(OPERATIONS, weights=mix)[0], rng, scans, uploads, tally)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return tally, time.perf_counter() - started


# --- report -------------------------------------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def summary_rows(tally: Tally, elapsed_s: float) -> list[dict[str, Any]]:
    rows = []
    for op in OPERATIONS:
        statuses = {key.split(" ", 1)[1]: n for key, n in sorted(tally.statuses.items()) if key.startswith(f"{op} ")}
        ok = sum(n for status, n in statuses.items() if status.isdigit() and int(status) in EXPECTED[op])
        latencies = tally.latencies_ms[op]
        rows.append(
            {
                "operation": op,
                "requests": sum(statuses.values()),
                "ok": ok,
                "backpressure_429": statuses.get("429", 0),
                "errors": sum(statuses.values()) - ok - statuses.get("429", 0),
                "statuses": statuses,
                "p50_ms": percentile(latencies, 50),
                "p95_ms": percentile(latencies, 95),
                "p99_ms": percentile(latencies, 99),
                "per_s": ok / elapsed_s,
            }
        )
    return rows


def print_table(rows: Sequence[dict[str, Any]]) -> None:
    header = (
        f"{'operation':<10}{'requests':>9}{'ok':>7}{'429':>6}{'errors':>7}"
        f"{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'ok/s':>8}  statuses"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        statuses = " ".join(f"{status}:{n}" for status, n in r["statuses"].items())
        print(
            f"{r['operation']:<10}{r['requests']:>9}{r['ok']:>7}{r['backpressure_429']:>6}{r['errors']:>7}"
            f"{r['p50_ms']:>9.1f}{r['p95_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['per_s']:>8.1f}  {statuses}"
        )


# --- consistency ----------------------------------------------------------------------------------------------------
def served_catalog(client: httpx.Client) -> tuple[set[str], int]:
    ids: set[str] = set()
    offset, total = 0, 0
    while True:
        page = client.get("/v1/catalog/images", params={"limit": 1000, "offset": offset}).json()
        ids.update(image["image_id"] for image in page["images"])
        total = int(page["total"])
        offset += 1000
        if offset >= total:
            return ids, total


def offline_check(data_dir: Path) -> dict[str, Any]:
    """The stopped service's data directory as a restart finds it, before any repair: index file vs catalog."""
    from embeddings import VectorIndex
    from reference_catalog import CatalogRepository, create_catalog_engine

    db = create_catalog_engine(f"sqlite:///{data_dir / 'catalog.sqlite3'}")
    try:
        catalog = CatalogRepository(db)
        keys = {ref.key for ref in catalog.all_images()}
        revision = catalog.revision()
    finally:
        db.dispose()
    newest = max((data_dir / "index").glob("*.faiss"), key=lambda p: p.stat().st_mtime)
    index = VectorIndex.load(newest)
    ids = set(index.ids().tolist())
    return {
        "index_file": newest.name,
        "index_size": len(ids),
        "catalog_size": len(keys),
        "id_sets_equal": ids == keys,
        "revision_equal": index.revision == revision,
    }


# --- main -------------------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load (default 30)")
    parser.add_argument("--requests", type=int, help="stop after this many requests")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--mix", default="80,15,5", help="scan,upload,delete weights (default 80,15,5)")
    parser.add_argument("--tiny", action="store_true", help="the tiny test model with random weights (fast start)")
    parser.add_argument("--generated", action="store_true", help="generated photos instead of ../shared/data/sneakers")
    parser.add_argument("--reference-limit", type=int, help="import only this many reference photos")
    parser.add_argument("--data-dir", type=Path, help="where the service keeps its data (default: a temp dir, removed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    mix = [float(x) for x in args.mix.split(",")]
    if len(mix) != 3 or sum(mix) <= 0:
        parser.error("--mix takes three weights: scan,upload,delete")
    generated = args.generated or not (SHARED / "sneakers" / "manifest.csv").is_file()
    model_flags = TINY_FLAGS if args.tiny else []
    owned = args.data_dir is None
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="cs-load-")) / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    env = child_env({"COUNTERFEIT_SCAN_INDEX_SAVE_INTERVAL_S": "1"})
    try:
        with tempfile.TemporaryDirectory() as scratch:
            if generated:
                manifest = write_generated_manifest(Path(scratch), args.reference_limit or 300)
            else:
                references = sneaker_rows("reference")[: args.reference_limit]
                manifest = write_limited_manifest(Path(scratch), references)
            started = time.perf_counter()
            imported = cli_json(["catalog", "import", str(manifest), "--data-dir", str(data_dir), *model_flags], env)
            print(f"catalog: {imported['added']} reference photos imported in {time.perf_counter() - started:.1f} s "
                  f"({'generated' if generated else 'sneakers reference split'}), index {imported['index_version']}")  # fmt: skip
        token = cli_json(["keys", "create", "--role", "admin", "--name", "load-test", "--data-dir", str(data_dir)], env)["key"]
        headers = {"Authorization": f"Bearer {token}"}
        scans, uploads = photo_pools(generated)
        random.Random(args.seed).shuffle(uploads)
        service = Service(data_dir, model_flags, env)
        stopped = False
        try:
            ready = service.wait_ready()
            print(f"serving {ready['model']['architecture']} ({ready['model']['runtime']}) at {service.url}; "
                  f"{args.concurrency} in flight, mix scan/upload/delete {args.mix}, "
                  f"{f'{args.requests} requests' if args.requests else f'{args.duration:.0f} s'}")  # fmt: skip
            tally, elapsed = asyncio.run(
                run_load(service.url, headers, scans, uploads, mix, args.concurrency, args.duration, args.requests, args.seed)
            )
            rows = summary_rows(tally, elapsed)
            print(f"\n{sum(r['requests'] for r in rows)} requests in {elapsed:.1f} s "
                  f"({sum(r['ok'] for r in rows) / elapsed:.1f} ok/s); deletes sent as scans (nothing to delete yet): "
                  f"{tally.substituted}")  # fmt: skip
            print_table(rows)
            with httpx.Client(base_url=service.url, headers=headers, timeout=60) as client:
                ids, total = served_catalog(client)
                index_size = int(client.get("/readyz").json()["index_size"])
            expected = int(imported["index_size"]) + len(tally.created) - len(tally.deleted)
            serving = {
                "catalog_total": total,
                "index_size": index_size,
                "expected_from_acknowledged_writes": expected,
                "created_present": len(tally.created - tally.deleted - ids) == 0,
                "deleted_absent": not (tally.deleted & ids),
            }
            stopped = True
            exit_code = service.stop()
            offline = offline_check(data_dir)
        finally:
            if not stopped:
                service.stop()
        print("\nconsistency")
        print(f"  while serving: catalog {total} images, index {index_size}, expected from acknowledged writes {expected}; "
              f"every acknowledged upload present: {serving['created_present']}, every acknowledged delete gone: "
              f"{serving['deleted_absent']}")  # fmt: skip
        print(f"  after a clean stop (SIGTERM, exit status {exit_code}): index file {offline['index_file']} "
              f"holds {offline['index_size']}, catalog {offline['catalog_size']}; same id sets: {offline['id_sets_equal']}, "
              f"same revision: {offline['revision_equal']}")  # fmt: skip
        agree = (
            total == index_size == expected == offline["index_size"] == offline["catalog_size"]
            and bool(serving["created_present"])
            and bool(serving["deleted_absent"])
            and bool(offline["id_sets_equal"])
            and bool(offline["revision_equal"])
        )
        errors = sum(r["errors"] for r in rows)
        if tally.unexpected:
            print("\nunexpected answers (first 5):\n  " + "\n  ".join(tally.unexpected[:5]))
        print(f"\nRESULT: {'catalog and index agree' if agree else 'CATALOG AND INDEX DISAGREE'}; {errors} errors")
        if args.json:
            args.json.write_text(
                json.dumps({"rows": rows, "elapsed_s": elapsed, "serving": serving, "offline": offline, "agree": agree}, indent=2)
            )
        return 0 if agree and errors == 0 else 1
    finally:
        if owned:
            shutil.rmtree(data_dir.parent, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
