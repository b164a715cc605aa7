"""Two service replicas on one PostgreSQL catalog: how long a write on one takes to be searchable on the other.

    .venv/bin/python benchmarks/replicas.py [--catalog 2000] [--writes 30] [--intervals 0.5,5] [--full-sync-writes 5]
                                            [--tiny] [--database-url postgresql+psycopg://...] [--json OUT]

Starts a throw-away PostgreSQL cluster on loopback (as tests/postgres.py does for the tests; `--database-url` names
an admin URL of a running server instead), imports a catalog of `--catalog` generated photos into a fresh database
with `counterfeit-scan catalog import`, then, for each `--intervals` value, starts two `counterfeit-scan serve`
processes (replicas a and b: one database, one data directory) with `index_save_interval_s` at that value, and
`--writes` times: waits a random part of the interval (so writes fall anywhere in b's follow cycle), uploads a new
photo to a, and from a's answer on scans the same photo on b until b's top match is the new image. The lag is the
time from a's answer to the answer of b's first scan that finds it (so it includes up to one scan of b; b's scan
time is printed beside it). Then `--full-sync-writes` more writes, each with the change feed pruned to the new
revision right after a's answer, which sends b down the full-sync path (re-reading the whole catalog, as every follow
did before the feed).

Prints per interval: the lag's p50, p90, p99 and max, b's scan time, and from b's log the time b took to apply a feed
batch (per batch) and to read the whole catalog at this size. Default model: EfficientNet-Lite0 (`--tiny`: the test
model with random weights).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.load import TINY_FLAGS, child_env, generated_photo, write_generated_manifest
from benchmarks.service_process import CLI, REPO, cli_json, free_port, wait_ready
from reference_catalog import CatalogRepository, create_catalog_engine
from tests.postgres import INITDB_OPTIONS, SERVER_USER, PostgresServer, _as_server_user, find_bindir

FOLLOWED = re.compile(r"followed the catalog from revision \d+ to \d+ in ([\d.]+) ms")
FULL_SYNC = re.compile(r"read the whole catalog \((\d+) images\) to revision \d+ in ([\d.]+) ms")


@contextmanager
def throwaway_postgres(admin_url: str | None) -> Iterator[PostgresServer]:
    """A PostgreSQL server: the one at `admin_url`, or a cluster in a temp dir, stopped and removed afterwards."""
    from sqlalchemy.engine import URL, make_url

    if admin_url:
        yield PostgresServer(make_url(admin_url).set(drivername="postgresql+psycopg"))
        return
    bindir = find_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL is not installed (no initdb/pg_ctl found); or give --database-url")
    root = Path(tempfile.mkdtemp(prefix="cs-bench-postgres-"))
    data, sockets, port = root / "data", root / "sockets", free_port()
    sockets.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, SERVER_USER)
        shutil.chown(sockets, SERVER_USER)
    try:
        subprocess.run(
            _as_server_user([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", *INITDB_OPTIONS]),
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        # durable settings as a deployment would have them (the tests' cluster runs with fsync off)
        options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c max_connections=200"
        subprocess.run(
            _as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-o", options, "-w", "start"]),
            check=True, capture_output=True, timeout=90,
        )  # fmt: skip
        yield PostgresServer(
            URL.create("postgresql+psycopg", username="postgres", host="127.0.0.1", port=port, database="postgres")
        )
    finally:
        subprocess.run(
            _as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
            capture_output=True, check=False, timeout=60,
        )  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


class Replica:
    """`counterfeit-scan serve` in a subprocess on a free loopback port, its log beside the data directory."""

    def __init__(self, name: str, data_dir: Path, model_flags: Sequence[str], env: dict[str, str]) -> None:
        self.name = name
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log_path = data_dir.parent / f"{name}.log"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [*CLI, "serve", "--data-dir", str(data_dir), "--port", self.url.rsplit(":", 1)[1], *model_flags],
                env=env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(60)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def top_match(client: httpx.Client, data: bytes) -> tuple[str | None, float]:
    """b's best match for `data`, and how long the scan took."""
    started = time.perf_counter()
    response = client.post("/v1/scan", files=[("images", ("q.jpg", data, "image/jpeg"))])
    took = time.perf_counter() - started
    response.raise_for_status()
    matches = response.json()["images"][0]["matches"]
    return (matches[0]["image_id"] if matches else None), took


def measure_lags(
    a: httpx.Client,
    b: httpx.Client,
    seeds: Iterator[int],
    writes: int,
    interval: float,
    prune: CatalogRepository | None = None,
    timeout_s: float = 120.0,
) -> tuple[list[float], list[float]]:
    """Lag (s) from a's upload answer to b's first scan finding the image, per write; and b's scan times (s). With
    `prune`, the change feed is pruned to the new revision right after each upload (b must read the whole catalog)."""
    rng = random.Random(0)
    lags: list[float] = []
    scans: list[float] = []
    for _ in range(writes):
        time.sleep(rng.uniform(0, interval))
        data = generated_photo(next(seeds))
        response = a.post(
            "/v1/catalog/images",
            files={"file": ("ref.jpg", data, "image/jpeg")},
            data={"brand": "Acme", "product": "replicated", "label": "authentic"},
        )
        acknowledged = time.perf_counter()
        response.raise_for_status()
        image_id = response.json()["image_id"]
        if prune is not None:
            prune.prune_changes(prune.revision())
        while True:
            found, took = top_match(b, data)
            scans.append(took)
            if found == image_id:
                lags.append(time.perf_counter() - acknowledged)
                break
            if time.perf_counter() - acknowledged > timeout_s:
                raise SystemExit(f"b did not find {image_id} within {timeout_s} s")
    return lags, scans


def log_times(text: str, pattern: re.Pattern[str], group: int) -> list[float]:
    return [float(match.group(group)) for match in pattern.finditer(text)]


def run_interval(
    interval: float, data_dir: Path, env: dict[str, str], flags: Sequence[str], token: str, args: argparse.Namespace, url: str
) -> dict[str, Any]:
    env = {**env, "COUNTERFEIT_SCAN_INDEX_SAVE_INTERVAL_S": str(interval)}
    for name in ("a", "b"):
        (data_dir.parent / f"{name}.log").unlink(missing_ok=True)
    replicas = [Replica(name, data_dir, flags, env) for name in ("a", "b")]
    repo = CatalogRepository(create_catalog_engine(url))
    try:
        for replica in replicas:
            wait_ready(replica.process, replica.url, lambda replica=replica: replica.log_text()[-4000:])  # type: ignore[misc]
        headers = {"Authorization": f"Bearer {token}"}
        with (
            httpx.Client(base_url=replicas[0].url, headers=headers, timeout=60) as a,
            httpx.Client(base_url=replicas[1].url, headers=headers, timeout=60) as b,
        ):
            seeds = itertools.count(args.next_seed)  # photos no run before has uploaded
            args.next_seed += 10_000
            top_match(b, generated_photo(0))  # warm
            b_log_before = len(replicas[1].log_text())
            lags, scans = measure_lags(a, b, seeds, args.writes, interval)
            follow_ms = log_times(replicas[1].log_text()[b_log_before:], FOLLOWED, 1)
            full_lags: list[float] = []
            full_ms: list[float] = []
            images = 0
            if args.full_sync_writes:
                before = len(replicas[1].log_text())
                full_lags, _ = measure_lags(a, b, seeds, args.full_sync_writes, interval, prune=repo)
                tail = replicas[1].log_text()[before:]
                full_ms = log_times(tail, FULL_SYNC, 2)
                images = max((int(m.group(1)) for m in FULL_SYNC.finditer(tail)), default=0)
    finally:
        for replica in replicas:
            replica.stop()
        repo.engine.dispose()
    figures = {
        "interval_s": interval,
        "writes": len(lags),
        "lag_p50_s": percentile(lags, 50),
        "lag_p90_s": percentile(lags, 90),
        "lag_p99_s": percentile(lags, 99),
        "lag_max_s": max(lags),
        "b_scan_ms_median": 1000 * statistics.median(scans),
        "follow_ms_median": statistics.median(follow_ms) if follow_ms else None,
        "follow_batches": len(follow_ms),
        "full_sync_writes": len(full_lags),
        "full_sync_lag_p50_s": percentile(full_lags, 50) if full_lags else None,
        "full_sync_ms_median": statistics.median(full_ms) if full_ms else None,
        "full_syncs_seen": len(full_ms),
        "catalog_images": images,
    }
    print(
        f"interval {interval:g} s: lag p50 {figures['lag_p50_s']:.2f} s, p90 {figures['lag_p90_s']:.2f} s, "
        f"p99 {figures['lag_p99_s']:.2f} s, max {figures['lag_max_s']:.2f} s over {len(lags)} writes "
        f"(b's scan {figures['b_scan_ms_median']:.0f} ms); b applied {len(follow_ms)} feed batches, "
        f"median {figures['follow_ms_median'] or 0:.1f} ms each"
    )
    if full_lags:
        print(
            f"  full-sync path: lag p50 {figures['full_sync_lag_p50_s']:.2f} s over {len(full_lags)} writes; "
            f"b read the whole catalog ({images} images) {len(full_ms)} times, "
            f"median {figures['full_sync_ms_median'] or 0:.0f} ms"
        )
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalog", type=int, default=2000, help="generated photos imported first (default 2000)")
    parser.add_argument("--writes", type=int, default=30, help="writes timed per interval (default 30)")
    parser.add_argument("--intervals", default="0.5,5", help="index_save_interval_s values, comma-separated (default 0.5,5)")
    parser.add_argument("--full-sync-writes", type=int, default=5, help="writes timed on the full-sync path (default 5)")
    parser.add_argument("--tiny", action="store_true", help="the tiny test model with random weights")
    parser.add_argument("--database-url", help="admin URL of a running PostgreSQL (default: start a throw-away one)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    args.next_seed = 1_000_000
    intervals = [float(x) for x in args.intervals.split(",")]
    flags = TINY_FLAGS if args.tiny else []
    with throwaway_postgres(args.database_url) as server, tempfile.TemporaryDirectory(prefix="cs-replicas-") as scratch:
        url = server.create_database()
        try:
            data_dir = Path(scratch) / "data"
            data_dir.mkdir()
            env = child_env({"COUNTERFEIT_SCAN_DATABASE_URL": url})
            started = time.perf_counter()
            manifest = write_generated_manifest(Path(scratch) / "photos", args.catalog)
            imported = cli_json(["catalog", "import", str(manifest), "--data-dir", str(data_dir), *flags], env)
            print(f"catalog: {imported['added']} generated photos imported into PostgreSQL in "
                  f"{time.perf_counter() - started:.1f} s; model {'cs-tiny-vit' if args.tiny else 'default'}")  # fmt: skip
            key = ["keys", "create", "--role", "admin", "--name", "replicas", "--data-dir", str(data_dir)]
            token = cli_json(key, env)["key"]
            results = [run_interval(interval, data_dir, env, flags, token, args, url) for interval in intervals]
        finally:
            server.drop_database(url)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
