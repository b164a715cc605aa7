"""`scan-batch --engine ray`: the listings scanned by a pool of Ray Data actors, on this machine or a Ray cluster.

    driver: read the manifest, skip what OUT holds ─► ray.data.from_items (blocks of listings, at least 4 per actor)
        ─► map_batches(ScanActor, ActorPoolStrategy(size=--actors), num_cpus=--actor-cpus, num_gpus=--gpus-per-actor)
        ─► iter_batches on the driver ─► OUT (service/bulk/outputs.py: resume, lock, atomic Parquet parts)

- Before the actors start, the driver opens the data directory as every command does (migrations, index in step with
  the catalog, heads fitted, the model's ONNX export written) and publishes an immutable index snapshot
  (service/catalog/index_snapshot.py). Each actor opens a read-only core on it (`ServiceCore.open_snapshot`): it
  creates, migrates and saves nothing, and never walks the blob store. Each actor reads its listings' photo files,
  decodes and embeds them through the micro-batcher and the one scan pipeline (service/bulk/scanning.py, as
  `--engine local` does), so both engines answer alike.
- One bad listing is an error row, written like any answer. A block whose actor fails as a whole is dropped, not
  the job (`DataContext.max_errored_blocks = -1`); its listings are counted as unanswered, and a rerun with the same
  OUT scans them (and only them).
- Sizing: the manifest is read on the driver (no read task needs a CPU), so actors may take every CPU. By default
  there are as many actors as fit the cluster's CPUs with one CPU left over for the driver's writing and Ray's own
  work. Each actor runs `--actor-cpus` model workers of one thread (one on a GPU) and as many decoding threads.
- Answers arrive in the order blocks finish, not in manifest order. `--record` is refused: the actors only read.

A cluster (`--address auto`, `ray://head:10001`, or RAY_ADDRESS set) needs this project importable by every worker:
installed (`pip install -c constraints.txt '.[ray]'`) in the Python environment of every node, or its source shipped
with the job while the nodes' environment has its dependencies: `ray job submit --working-dir . -- python -c
"from cli.main import main; main()" scan-batch ...` (the actors inherit the job's `runtime_env`, whose `working_dir` is
on their path). The data directory (database, ONNX export, heads, calibration, snapshots) and the photo files must be
at the same absolute paths on every node (a shared file system), or the catalog in PostgreSQL (`--database-url`) and
the rest shared; relative paths are resolved on the driver.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.data

from embeddings.runtimes import available_cores
from service.bulk.listings import Listing
from service.bulk.scanning import Answer, batcher_settings, scan_listings, window_for
from service.config import Settings
from service.core import ServiceCore
from service.scanning.batching import ScanBatcher

log = logging.getLogger(__name__)

MAX_LISTINGS_PER_BLOCK = 256
BLOCKS_PER_ACTOR = 4


class RayScanError(RuntimeError):
    """The Ray run cannot start or went wrong as a whole; the message says what to change."""


@dataclass(frozen=True)
class RayOptions:
    address: str | None
    actors: int  # 0: as many as fit
    actor_cpus: float
    gpus_per_actor: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RayOptions:
        bulk = settings.bulk
        return cls(bulk.ray_address or None, bulk.ray_actors, bulk.ray_actor_cpus, bulk.ray_gpus_per_actor)


@dataclass(frozen=True)
class RayRuntime:
    started_here: bool  # a private Ray this process started (and stops), rather than a cluster or one already up
    start_seconds: float
    cpus: float
    gpus: float


@contextmanager
def ray_runtime(address: str | None, quiet: bool = True) -> Iterator[RayRuntime]:
    """Connect to the cluster at `address`, or start a private Ray on this machine (None); one already initialised in
    this process (a test's) is used as it is."""
    started = time.perf_counter()
    started_here = False
    address = address or os.environ.get("RAY_ADDRESS") or None  # inside `ray job submit`: the job's cluster
    if not ray.is_initialized():
        level = logging.WARNING if quiet else logging.INFO
        if address:
            ray.init(address=address, log_to_driver=not quiet, logging_level=level)
        else:
            ray.init(num_cpus=available_cores(), include_dashboard=False, log_to_driver=not quiet, logging_level=level)
            started_here = True
    resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    runtime = RayRuntime(started_here, time.perf_counter() - started, resources.get("CPU", 0.0), resources.get("GPU", 0.0))
    try:
        yield runtime
    finally:
        if started_here:
            ray.shutdown()


def actor_count(options: RayOptions, runtime: RayRuntime) -> int:
    """The actors to start: as asked, or as many as fit with one CPU left over; refused when a private Ray cannot
    hold them (a fixed pool would wait for ever), a warning on a cluster (which may scale up)."""
    fit = int(runtime.cpus // options.actor_cpus)
    if options.gpus_per_actor > 0:
        fit = min(fit, int(runtime.gpus // options.gpus_per_actor))
    actors = options.actors or max(1, min(fit, int(max(runtime.cpus - 1, 1) // options.actor_cpus)))
    if actors > fit:
        need = f"{actors} actors x {options.actor_cpus:g} CPUs" + (
            f" and {options.gpus_per_actor:g} GPUs" if options.gpus_per_actor else ""
        )
        have = f"{runtime.cpus:g} CPUs and {runtime.gpus:g} GPUs"
        if runtime.started_here:
            raise RayScanError(f"{need} do not fit this machine's {have}: lower --actors, --actor-cpus or --gpus-per-actor")
        log.warning("%s do not fit the cluster's %s now: the pool waits for the cluster to grow", need, have)
    return actors


def actor_settings(settings: Settings, options: RayOptions) -> Settings:
    """An actor's settings: paths absolute (a worker's working folder is not the driver's), the model on `actor_cpus`
    single-threaded workers (one on a GPU) and as many decoding threads, unless those are set outright."""
    storage, model, throughput = settings.storage, settings.embedder, settings.throughput
    changes: dict[str, Any] = {"data_dir": storage.data_dir.resolve()}
    if model.checkpoint is not None:
        changes["checkpoint"] = model.checkpoint.resolve()
    if model.cache_dir is not None:
        changes["model_cache_dir"] = model.cache_dir.resolve()
    cores = max(1, math.ceil(options.actor_cpus))
    threads = model.threads or 1
    gpu = options.gpus_per_actor > 0
    changes["threads"] = threads
    changes["inference_workers"] = throughput.inference_workers or (1 if gpu else max(1, cores // threads))
    changes["decode_workers"] = throughput.decode_workers or throughput.decode_processes or cores
    return batcher_settings(settings.updated(**changes))


@dataclass(frozen=True)
class ScannedBlock:
    """An actor's answers for one block, with when (epoch seconds) the actor was ready and finished the block."""

    answers: list[tuple[str, Answer]]
    ready_at: float
    ended_at: float


class ScanActor:
    """One Ray actor: a read-only core on the snapshot, its own micro-batcher; scans the listings of each block."""

    def __init__(self, settings: Settings, snapshot: str, root: str) -> None:
        # service.core imports the `embeddings` package, which registers the project's model configs (cs-tiny-vit)
        self.core = ServiceCore.open_snapshot(settings, Path(snapshot))
        self.batcher = ScanBatcher(self.core.pipeline, settings)
        self.window = window_for(settings)
        self.root = Path(root)
        self.ready_at = time.time()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        listings = [_listing(item) for item in batch["listing"]]
        ids: list[str] = []
        answers: list[str] = []
        for listing, answer in scan_listings(self.batcher, listings, False, self.window, self.root, contain=True):
            ids.append(listing.listing_id)
            answers.append(json.dumps(answer, separators=(",", ":")))
        return {
            "listing_id": np.array(ids, dtype=object),
            "answer": np.array(answers, dtype=object),
            "ready_at": np.full(len(ids), self.ready_at),
            "ended_at": np.full(len(ids), time.time()),
        }


def _item(listing: Listing) -> dict[str, str]:
    """A listing as one JSON text column: simple for Arrow, whatever the manifest held."""
    paths = [str(p) for p in listing.paths]
    fields = {"listing_id": listing.listing_id, "line": listing.line, "paths": paths}
    return {"listing": json.dumps({**fields, "brand": listing.brand, "product": listing.product})}


def _listing(item: Any) -> Listing:
    fields = json.loads(str(item))
    return Listing(fields["listing_id"], fields["line"], [Path(p) for p in fields["paths"]], fields["brand"], fields["product"])


def block_size(listings: int, actors: int) -> int:
    """Listings per block: at least BLOCKS_PER_ACTOR blocks per actor (a small manifest is not one block that one actor
    scans alone), at most MAX_LISTINGS_PER_BLOCK (a failed block drops little; progress reaches OUT steadily)."""
    return max(1, min(MAX_LISTINGS_PER_BLOCK, math.ceil(listings / (actors * BLOCKS_PER_ACTOR))))


def scan_on_ray(
    settings: Settings, snapshot: Path, todo: Sequence[Listing], options: RayOptions, actors: int, show_progress: bool = False
) -> Iterator[ScannedBlock]:
    """Each block's answers as its actor finishes it; the listings of a block that failed as a whole never come."""
    if not todo:
        return
    context = ray.data.DataContext.get_current()
    context.max_errored_blocks = -1  # a failed block is dropped (its listings unanswered), never the whole run
    context.enable_progress_bars = show_progress
    context.execution_options.preserve_order = False
    per_block = block_size(len(todo), actors)
    dataset = ray.data.from_items([_item(x) for x in todo], override_num_blocks=math.ceil(len(todo) / per_block))
    scanned = dataset.map_batches(
        ScanActor,
        fn_constructor_kwargs={"settings": actor_settings(settings, options), "snapshot": str(snapshot), "root": os.getcwd()},
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=options.actor_cpus,
        num_gpus=options.gpus_per_actor or None,
        # A block per call (None); Ray wants a number with GPUs, and then bundles smaller blocks up to it.
        batch_size=per_block if options.gpus_per_actor else None,
        batch_format="numpy",
    )
    try:
        for batch in scanned.iter_batches(batch_size=None, batch_format="numpy"):
            answers = [(str(i), json.loads(str(a))) for i, a in zip(batch["listing_id"], batch["answer"], strict=True)]
            if answers:
                yield ScannedBlock(answers, float(batch["ready_at"].min()), float(batch["ended_at"].max()))
    except Exception as exc:  # Ray's own errors (an actor that cannot start, ...), whatever their class
        raise RayScanError(f"the Ray run failed: {exc}") from exc
