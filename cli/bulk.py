"""`scan-batch`: scan a day's listings offline, one answer per listing, resuming where an earlier run stopped; in this
process (`--engine local`) or on Ray actors (`--engine ray`, service/bulk/ray_engine.py)."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from cli.common import make_settings, open_core
from cli.options import engine_options, scoring_options, settings_options
from service.bulk.listings import Listing, ListingsError, read_listings
from service.bulk.outputs import JsonLinesOutput, OutputError, OutputFormat, ParquetOutput, open_output, output_format
from service.bulk.scanning import batcher_settings, scan_listings, window_for
from service.config import Settings
from service.scanning.batching import ScanBatcher

RAY_HINT = "pip install 'counterfeit-scan[ray]'"


@click.command("scan-batch")
@click.argument("listings_path", metavar="LISTINGS", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="JSON lines, one per listing; with --format parquet or a name ending .parquet, a folder of Parquet part files.",
)
@click.option("--format", "out_format", type=click.Choice(["jsonl", "parquet"]), help="Format of --out; default: from its name.")
@click.option("--record", is_flag=True, help="Record each scan in the database (GET /v1/scans/{id}), as POST /v1/scan does.")
@click.option("--workers", type=int, help="Decoding threads: the same as --decode-workers.")
@settings_options("throughput", "bulk")
@engine_options
@scoring_options
def scan_batch(
    listings_path: Path, out: Path, out_format: OutputFormat | None, record: bool, workers: int | None, **flags: Any
) -> None:
    """Scan many listings from a manifest; rows sharing a listing_id are one listing.

    LISTINGS is CSV (path[,listing_id][,brand][,product]), JSON lines (.jsonl, .json: objects with those keys) or
    Parquet (.parquet: those columns); paths are relative to its folder. Listings without a listing_id are identified
    by their photo's path as written.

    Writes one answer per listing to OUT: the same result as POST /v1/scan, or {"listing_id", "error", "status",
    "paths"} for a listing that cannot be scanned. As JSON lines, or as Parquet part files (nested fields as JSON text;
    see service/bulk/outputs.py). Run it again with the same --out after an interruption: listings already written
    are skipped.

    --engine local (the default) decodes on --workers threads beside the model (batches of --batch-size photos).
    --engine ray runs --actors Ray actors (this machine, or the cluster at --address), each on a read-only index
    snapshot; answers then come in the order they finish. The summary reports Ray's start-up apart from the scanning.
    """
    settings = make_settings(**{**flags, **({"decode_workers": workers} if workers is not None else {})})
    on_ray = settings.bulk.engine == "ray"
    if on_ray and record:
        raise click.UsageError("--record is not available with --engine ray (its actors only read); use --engine local")
    try:
        listings = read_listings(listings_path)
    except ListingsError as exc:
        raise click.ClickException(str(exc)) from exc
    with _output(out, output_format(out, out_format)) as output:
        todo = [listing for listing in listings if listing.listing_id not in output.done]
        summary: dict[str, Any] = {
            "listings": len(listings), "skipped": len(listings) - len(todo), "scanned": 0, "errors": 0, "photos": 0
        }  # fmt: skip
        if on_ray:
            _scan_on_ray(settings, todo, output, summary)
        else:
            _scan_here(settings.for_serving(), todo, record, output, summary)
    click.echo(json.dumps({"out": str(out), **summary}, indent=2))
    if summary.get("unanswered"):
        raise click.ClickException(
            f"{summary['unanswered']} listings were not answered (a Ray block failed as a whole: see the Ray logs); "
            "run again with the same --out to scan them"
        )


@contextmanager
def _output(out: Path, fmt: OutputFormat) -> Iterator[JsonLinesOutput | ParquetOutput]:
    try:
        with open_output(out, fmt, lambda message: click.echo(message, err=True)) as output:
            yield output
    except OutputError as exc:
        raise click.ClickException(str(exc)) from exc


def _progress(todo: list[Listing]) -> tqdm[Any]:
    return tqdm(total=sum(len(x.paths) for x in todo), desc="scanning", unit="photo", disable=not sys.stderr.isatty())


def _count(summary: dict[str, Any], listing: Listing, answer: dict[str, Any]) -> None:
    summary["errors" if "error" in answer else "scanned"] += 1
    summary["photos"] += 0 if "error" in answer else len(listing.paths)


def _rates(summary: dict[str, Any], seconds: float) -> None:
    summary.update(seconds=round(seconds, 3), photos_per_s=round(summary["photos"] / seconds, 1) if seconds else None)


def _scan_here(
    settings: Settings, todo: list[Listing], record: bool, output: JsonLinesOutput | ParquetOutput, summary: dict[str, Any]
) -> None:
    """In this process: a micro-batcher over the core's pipeline, answers written in manifest order."""
    # The model batch is --batch-size; enough listings are kept in flight to fill the next batches while one runs.
    window = window_for(settings)  # resolved by for_serving
    settings = batcher_settings(settings)
    with open_core(settings) as core, ScanBatcher(core.pipeline, settings) as batcher:
        started = time.perf_counter()  # scanning only, not loading the model and index
        bar = _progress(todo)
        for listing, answer in scan_listings(batcher, todo, record, window):
            output.write(answer)
            _count(summary, listing, answer)
            bar.update(len(listing.paths))
        bar.close()
        seconds = time.perf_counter() - started
    _rates(summary, seconds)


def _scan_on_ray(
    settings: Settings, todo: list[Listing], output: JsonLinesOutput | ParquetOutput, summary: dict[str, Any]
) -> None:
    """On Ray actors (service/bulk/ray_engine.py): the driver publishes the index snapshot and writes the answers."""
    try:
        from service.bulk import ray_engine
    except ImportError as exc:
        raise click.ClickException(f"--engine ray needs Ray: {RAY_HINT} ({exc})") from exc
    options = ray_engine.RayOptions.from_settings(settings)
    summary.update(engine="ray", actors=0, ray_start_s=0.0, prepare_s=0.0, actors_ready_s=None, unanswered=0)
    if not todo:
        _rates(summary, 0.0)
        return
    quiet = logging.getLogger().getEffectiveLevel() > logging.INFO
    try:
        with ray_engine.ray_runtime(options.address, quiet) as runtime:
            if quiet:
                logging.getLogger("ray.data").setLevel(logging.WARNING)
            actors = ray_engine.actor_count(options, runtime)
            prepared = time.perf_counter()
            with open_core(settings) as core:  # migrated, index in step, heads fitted, model exported: then frozen
                snapshot = core.index_keeper.publish_snapshot().resolve()
            summary.update(actors=actors, ray_start_s=round(runtime.start_seconds, 3), snapshot=str(snapshot))
            summary["prepare_s"] = round(time.perf_counter() - prepared, 3)
            waiting = {listing.listing_id: listing for listing in todo}
            started, started_at = time.perf_counter(), time.time()  # the actors' start included: they start with the run
            first_ready, last_end = float("inf"), started_at  # epoch seconds, as the actors tell
            bar = _progress(todo)
            for block in ray_engine.scan_on_ray(settings, snapshot, todo, options, actors, show_progress=not quiet):
                first_ready, last_end = min(first_ready, block.ready_at), max(last_end, block.ended_at)
                for listing_id, answer in block.answers:
                    listing = waiting.pop(listing_id, None)
                    if listing is None:
                        continue  # a block retried after its first answers arrived: written once
                    output.write(answer)
                    _count(summary, listing, answer)
                    bar.update(len(listing.paths))
            bar.close()
            seconds = time.perf_counter() - started
    except ray_engine.RayScanError as exc:
        raise click.ClickException(str(exc)) from exc
    summary["unanswered"] = len(waiting)
    _rates(summary, seconds)
    if first_ready < last_end:  # the rate once an actor was up: their start-up (imports, model load) left out
        summary["actors_ready_s"] = round(first_ready - started_at, 3)
        summary["steady_photos_per_s"] = round(summary["photos"] / (last_end - first_ready), 1)
