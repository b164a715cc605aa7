"""Served throughput and latency of POST /v1/scan against the raw model, on the same real photos.

    .venv/bin/python benchmarks/serve.py [--concurrency 1,2,4,8,16] [--requests 400] [--photos-per-request 1]

Starts the real service (`counterfeit-scan serve`, a subprocess on loopback) on a catalog imported from the sneakers
reference split, with the default model (EfficientNet-Lite0 on ONNX Runtime), and a scanner API key. Fires the
sneakers query-split JPEGs from a lean asyncio HTTP/1.1 client at each concurrency (a bounded number of requests each), then
an open-loop Poisson load at half the saturating throughput. Prints photos/s, latency p50/p95/p99, the mean model
batch the service formed, its CPU time per photo and peak RSS; then, with the service stopped, the raw model forward
throughput on the same photos at the same batch sizes (the fastest runtime on this machine: ONNX Runtime, the
better of one session with all cores and one single-threaded session per core). Prints served/raw last.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.baseline import DEFAULT_DATA, best_raw, machine, model_inputs, query_photos
from benchmarks.http_load import LevelResult, bodies_for, closed_loop, open_loop
from benchmarks.service_process import CLI, cli_json, free_port, wait_ready
from embeddings import load_embedder
from service.config import Settings


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if len(values) else float("nan")


def queue_floor_p99(rate: float, service_s: float, servers: int, arrivals: int = 200_000, seed: int = 0) -> float:
    """p99 time in system of an ideal M/D/c queue: Poisson arrivals at `rate`, `servers` servers that each take
    exactly `service_s` per request and share nothing. No service with that many model workers and that capacity
    can beat it at that load; the half-load target is judged against it."""
    rng = random.Random(seed)
    free = [0.0] * servers
    now = 0.0
    times = np.empty(arrivals)
    for i in range(arrivals):
        now += rng.expovariate(rate)
        start = max(now, heapq.heappop(free))
        heapq.heappush(free, start + service_s)
        times[i] = start + service_s - now
    return float(np.percentile(times, 99))


# --- the service --------------------------------------------------------------------------------------------------
def prepare_data_dir(data_dir: Path, data: Path, env: dict[str, str]) -> None:
    """Import the sneakers reference split (a no-op when the data directory already holds it)."""
    summary = cli_json(
        ["catalog", "import", str(data / "sneakers" / "manifest.csv"), "--split", "reference", "--data-dir", str(data_dir)], env
    )
    print(f"catalog: {summary['index_size']} reference images ({summary['added']} added), index {summary['index_version']}")


def scanner_key(data_dir: Path, env: dict[str, str]) -> dict[str, str]:
    """Headers with a fresh scanner key, or none when this build has no API keys."""
    try:
        created = cli_json(["keys", "create", "--role", "scanner", "--name", "benchmark", "--data-dir", str(data_dir)], env)
    except SystemExit:
        return {}
    return {"authorization": f"Bearer {created['key']}"}


def stat_cpu_seconds(stat: str) -> float:
    """User + system CPU seconds from a /proc/.../stat line (fields after the parenthesised name)."""
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendant_pids(ancestor: int) -> list[int]:
    """The processes below `ancestor` (children, their children, ...), from /proc."""
    parents: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text()
            except OSError:  # ended meanwhile
                continue
            parents.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(proc.name))
    found: list[int] = []
    todo = [ancestor]
    while todo:
        children = parents.get(todo.pop(), [])
        found.extend(children)
        todo.extend(children)
    return found


THREAD_GROUPS = {"scan-decode": "decode", "scan-inference": "model", "scan-finish": "search+score"}


class Server:
    """`counterfeit-scan serve` in a subprocess; CPU time and peak RSS read from /proc."""

    def __init__(self, data_dir: Path, env: dict[str, str], headers: dict[str, str]) -> None:
        self.headers = headers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [*CLI, "serve", "--data-dir", str(data_dir), "--port", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def wait_ready(self, timeout: float = 300) -> dict[str, Any]:
        return wait_ready(self.process, self.url, self._stderr_tail, timeout)

    def _stderr_tail(self) -> str:
        """The end of the service's stderr once it has exited (reading it before would wait for the exit)."""
        if self.process.poll() is None or self.process.stderr is None:
            return ""
        return self.process.stderr.read().decode(errors="replace")[-4000:]

    def children(self) -> list[int]:
        """The service's descendant processes (with COUNTERFEIT_SCAN_DECODE_PROCESSES set: multiprocessing's fork server,
        the decoding processes forked from it, and its resource tracker)."""
        return descendant_pids(self.process.pid)

    def cpu_seconds(self) -> float:
        """CPU seconds of the service and its child processes."""
        return sum(self._process_cpu(pid) for pid in [self.process.pid, *self.children()])

    @staticmethod
    def _process_cpu(pid: int) -> float:
        try:
            return stat_cpu_seconds(Path(f"/proc/{pid}/stat").read_text())
        except OSError:
            return 0.0

    def cpu_by_thread(self) -> dict[str, float]:
        """CPU seconds of the service's threads, grouped by the names the service gives them at the OS level: the
        main thread runs the event loop (HTTP, multipart, responses), scan-decode_N decode, scan-inference-N the
        model, scan-finish_0 search, scoring and scan records; unnamed threads are "other"; child processes (decoding
        processes) are "decode procs"."""
        groups: dict[str, float] = {}
        process_name = Path(f"/proc/{self.process.pid}/comm").read_text().strip()
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            try:
                stat = (task / "stat").read_text()
            except OSError:  # the thread ended meanwhile
                continue
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            if task.name == str(self.process.pid):
                group = "event loop"
            elif comm == process_name:
                group = "other"
            else:
                group = THREAD_GROUPS.get(re.sub(r"[-_]?\d*$", "", comm), comm)
            groups[group] = groups.get(group, 0.0) + stat_cpu_seconds(stat)
        children = self.children()
        if children:
            groups["decode procs"] = sum(self._process_cpu(pid) for pid in children)
        return groups

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def metrics(self) -> dict[str, float]:
        response = httpx.get(f"{self.url}/metrics", headers=self.headers, timeout=10)
        response.raise_for_status()
        text = response.text
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if not sample.labels or set(sample.labels) == {"le"}:
                    key = sample.name + (f"{{le={sample.labels['le']}}}" if "le" in sample.labels else "")
                    values[key] = sample.value
                elif sample.name == "python_gc_collections_total" and sample.labels.get("generation") == "2":
                    values["full_gc"] = sample.value  # full collections: every thread stops while they run
        return values

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def measure(server: Server, run: Any) -> LevelResult:
    before, cpu_before, client_before = server.metrics(), server.cpu_seconds(), time.process_time()
    threads_before = server.cpu_by_thread()
    result: LevelResult = asyncio.run(run)
    after = server.metrics()
    photos = max(1, result.photos)
    result.server_cpu_ms_per_photo = (server.cpu_seconds() - cpu_before) * 1000 / photos
    result.client_cpu_ms_per_photo = (time.process_time() - client_before) * 1000 / photos
    batches = after.get("counterfeit_scan_batch_photos_count", 0) - before.get("counterfeit_scan_batch_photos_count", 0)
    total = after.get("counterfeit_scan_batch_photos_sum", 0) - before.get("counterfeit_scan_batch_photos_sum", 0)
    result.batch_mean = total / batches if batches else float("nan")
    result.peak_rss_mb = server.peak_rss_mb()
    result.full_gcs = int(after.get("full_gc", 0) - before.get("full_gc", 0))
    threads_after = server.cpu_by_thread()
    result.cpu_by_thread = {
        group: (seconds - threads_before.get(group, 0.0)) * 1000 / photos for group, seconds in threads_after.items()
    }
    inference = "counterfeit_scan_inference_seconds_sum"
    result.model_wall_ms = (after.get(inference, 0) - before.get(inference, 0)) * 1000 / photos
    return result


def cpu_table(results: Sequence[LevelResult], raw_ms: float) -> str:
    """Where the service's CPU goes, per photo, by thread; and the model's wall time per photo in the service
    against the raw run's (each worker / session on one thread): the gap is contention for the cores."""
    groups = sorted({g for r in results for g in r.cpu_by_thread}, key=lambda g: -sum(r.cpu_by_thread.get(g, 0) for r in results))
    lines = [f"{'load':>22} " + " ".join(f"{g[:12]:>12}" for g in groups) + f" {'model wall':>10} {'raw wall':>8}"]
    for r in results:
        cells = " ".join(f"{r.cpu_by_thread.get(g, 0.0):12.2f}" for g in groups)
        lines.append(f"{r.name:>22} {cells} {r.model_wall_ms:10.2f} {raw_ms:8.2f}")
    return "\n".join(lines)


def row(result: LevelResult) -> str:
    lat = result.latencies
    refused = result.statuses.get(429, 0)
    return (
        f"{result.name:>22} {result.throughput:8.1f} {percentile(lat, 50) * 1000:8.1f} {percentile(lat, 95) * 1000:8.1f} "
        f"{percentile(lat, 99) * 1000:8.1f} {result.batch_mean:6.1f} {result.server_cpu_ms_per_photo:7.2f} "
        f"{result.client_cpu_ms_per_photo:7.2f} {result.peak_rss_mb:8.0f} {refused:5d} {result.full_gcs:4d}"
    )


HEADER = (
    f"{'load':>22} {'photo/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'batch':>6} {'srv cpu':>7} {'cli cpu':>7} "
    f"{'peak MB':>8} {'429':>5} {'gc2':>4}"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared photo data (../shared/data)")
    parser.add_argument("--work-dir", type=Path, help="data directory to reuse between runs (default: a temporary one)")
    parser.add_argument("--concurrency", default="1,2,4,8,16", help="comma-separated concurrency levels")
    parser.add_argument("--requests", type=int, default=400, help="requests per concurrency level")
    parser.add_argument("--photos-per-request", type=int, default=1)
    parser.add_argument("--half-load-requests", type=int, default=600, help="requests of the open-loop run at half load")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra COUNTERFEIT_SCAN_* settings")
    args = parser.parse_args()

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="cs-bench-serve-"))
    os.environ.update(dict(item.split("=", 1) for item in args.env))  # the service and the raw run read the same
    env = {"COUNTERFEIT_SCAN_LOG_LEVEL": "warning", **os.environ}
    print(f"machine: {json.dumps(machine())}")
    prepare_data_dir(work, args.data, env)
    headers = scanner_key(work, env)
    paths = query_photos(args.data)
    bodies = bodies_for(paths, args.photos_per_request)
    print(f"photos: {len(paths)} sneakers query-split JPEGs, {args.photos_per_request} per request; auth: {bool(headers)}")
    settings_shown = {k: v for k, v in env.items() if k.startswith("COUNTERFEIT_SCAN_")}
    print(f"service settings: {settings_shown or 'defaults'}")

    server = Server(work, env, headers)
    try:
        ready = server.wait_ready()
        print(f"model: {ready['model']['architecture']} on {ready['model']['runtime']}, index of {ready['index_size']} images")
        print(HEADER)
        levels = [int(c) for c in args.concurrency.split(",")]
        results = []
        for concurrency in levels:
            result = measure(server, closed_loop(server.url, bodies, headers, concurrency, args.requests))
            results.append(result)
            print(row(result), flush=True)
        saturated = max(results, key=lambda r: r.throughput)
        rate = saturated.throughput / 2 / args.photos_per_request
        half = measure(server, open_loop(server.url, bodies, headers, rate, args.half_load_requests))
        print(row(half), flush=True)
    finally:
        server.stop()

    settings = Settings(data_dir=work)
    embedder = load_embedder(settings.model_spec(), settings.export_dir)
    inputs = model_inputs(embedder, paths)
    print("\nraw model forward pass on the same photos (service stopped):")
    raw: dict[int, tuple[float, str]] = {}
    for size in sorted({max(1, round(r.batch_mean)) for r in results if r.batch_mean == r.batch_mean} | {1}):
        raw[size] = best_raw(embedder, settings.export_dir, inputs, size)
        print(f"  batch {size:3d}: {raw[size][0]:7.1f} photos/s ({raw[size][1]})")
    fastest = max(v[0] for v in raw.values())

    workers = settings.for_serving().throughput.inference_workers
    single = results[0] if levels[0] == 1 else None
    if single is not None:
        base = percentile(single.latencies, 50)
        p99 = percentile(half.latencies, 99)
        shape = "single-photo" if args.photos_per_request == 1 else f"single-request ({args.photos_per_request} photos)"
        print(
            f"\n{shape} latency (c=1, p50) {base * 1000:.1f} ms; p99 at half the saturating load "
            f"({rate * args.photos_per_request:.0f} photos/s) {p99 * 1000:.1f} ms = {p99 / base:.2f}x (target < 3x)"
        )
        # one request on one worker: with several photos per request the service splits it between workers, so the
        # floor printed then is above the true one
        service_s = workers * args.photos_per_request / saturated.throughput
        floor = queue_floor_p99(rate, service_s, workers)
        print(
            f"queueing floor at that load: an ideal M/D/{workers} queue ({workers} model workers, "
            f"{service_s * 1000:.1f} ms per request each) has p99 {floor * 1000:.1f} ms = {floor / service_s:.2f}x "
            f"its service time; this run: {p99 / service_s:.2f}x"
        )
    print("\nserved/raw by concurrency (raw at the batch size the service formed; and against the fastest raw):")
    for result in results:
        size = max(1, round(result.batch_mean)) if result.batch_mean == result.batch_mean else 1
        print(
            f"  {result.name:>6}: {result.throughput:7.1f} / {raw[size][0]:7.1f} = {result.throughput / raw[size][0]:.3f}"
            f"   (vs fastest {fastest:.1f}: {result.throughput / fastest:.3f})"
        )
    print(f"\nservice CPU by thread, ms per photo; the model's wall ms per photo per worker, served and raw ({workers} workers):")
    print(cpu_table([*results, half], workers * 1000 / raw[1][0]))
    best = max(results, key=lambda r: r.throughput / raw[max(1, round(r.batch_mean)) if r.batch_mean == r.batch_mean else 1][0])
    best_size = max(1, round(best.batch_mean)) if best.batch_mean == best.batch_mean else 1
    print(f"load while measuring: {os.getloadavg()}")
    if args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"served/raw at the best concurrency ({best.name}, batch {best_size}): "
        f"{best.throughput / raw[best_size][0]:.3f} (target >= 0.9)"
    )


if __name__ == "__main__":
    main()
