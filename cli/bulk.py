"""`scan-batch`: scan a day's listings offline, one JSON line per listing, resuming where an earlier run stopped."""

from __future__ import annotations

import csv
import fcntl
import json
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import click
from tqdm import tqdm

from cli.common import make_settings, open_core
from cli.options import engine_options, scoring_options, settings_options
from embeddings import ImageRejected
from reference_catalog.text import control_character
from service.api.errors import domain_error_status
from service.errors import DomainError, ServiceNotReady
from service.scanning.batching import ScanBatcher
from service.scanning.photo_prep import PhotoInput
from service.scanning.pipeline import ScanRequest
from service.scanning.result import ScanResult


@dataclass
class Listing:
    """Rows of the manifest that share a listing_id (or one row without one, keyed by its path)."""

    listing_id: str
    line: int
    paths: list[Path] = field(default_factory=list)
    brand: str | None = None
    product: str | None = None


def read_listings(manifest: Path) -> list[Listing]:
    """Listings in manifest order; columns path[,listing_id][,brand][,product], paths relative to the manifest."""
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if "path" not in (reader.fieldnames or []):
                raise click.ClickException(
                    f"{manifest}: the header needs a 'path' column (and optionally listing_id, brand, product)"
                )
            listings: dict[str, Listing] = {}
            for line, row in enumerate(reader, start=2):
                path = (row.get("path") or "").strip()
                if not path:
                    raise click.ClickException(f"{manifest} line {line}: empty path")
                listing_id = (row.get("listing_id") or "").strip()
                for name, value in (("path", path), ("listing_id", listing_id)):
                    bad = control_character(value)
                    if bad:  # ids are echoed in every answer line and are what a resumed run skips by: printable only
                        raise click.ClickException(f"{manifest} line {line}: {name} contains control characters ({bad})")
                key = listing_id or path
                if not listing_id and key in listings:
                    continue  # the same photo listed twice on its own: one listing
                listing = listings.setdefault(
                    key,
                    Listing(
                        key,
                        line,
                        brand=(row.get("brand") or "").strip() or None,
                        product=(row.get("product") or "").strip() or None,
                    ),
                )
                listing.paths.append(manifest.parent / path)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise click.ClickException(f"cannot read {manifest}: {exc}") from exc
    return list(listings.values())


def resume_point(out: Path) -> set[str]:
    """listing_ids already answered in `out`; a torn last line (a crash mid-write) is cut off, to be scanned again."""
    if not out.exists():
        return set()
    done: set[str] = set()
    with open(out, "r+b") as fh:
        *lines, tail = fh.read().split(b"\n")  # `tail`: bytes after the last newline, empty unless a write was torn
        keep = 0
        for number, raw in enumerate(lines, start=1):
            listing_id = _listing_id(raw)
            if listing_id is None:
                if number < len(lines) or tail:
                    raise click.ClickException(f"{out} line {number} is not a scan result; fix or remove it, then run again")
                tail = raw  # a last line that is not JSON (garbage after a crash): torn as well
                break
            done.add(listing_id)
            keep += len(raw) + 1
        if tail:
            click.echo(f"{out}: its last line was cut short by an interruption; scanning that listing again", err=True)
            fh.truncate(keep)
    return done


def _listing_id(line: bytes) -> str | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    value = record.get("listing_id") if isinstance(record, dict) else None
    return str(value) if value is not None else None


def _error(listing: Listing, detail: str, status: int) -> dict[str, Any]:
    return {"listing_id": listing.listing_id, "error": detail, "status": status, "paths": [str(p) for p in listing.paths]}


def _photos(listing: Listing) -> list[PhotoInput]:
    return [PhotoInput(path.read_bytes(), path.name) for path in listing.paths]


def _write(fh: IO[str], record: dict[str, Any]) -> None:
    fh.write(json.dumps(record, separators=(",", ":")) + "\n")
    fh.flush()


@click.command("scan-batch")
@click.argument("listings_csv", metavar="LISTINGS.csv", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="JSON lines: one per listing.")
@click.option("--record", is_flag=True, help="Record each scan in the database (GET /v1/scans/{id}), as POST /v1/scan does.")
@click.option("--workers", type=int, help="Decoding threads: the same as --decode-workers.")
@settings_options("throughput")
@engine_options
@scoring_options
def scan_batch(listings_csv: Path, out: Path, record: bool, workers: int | None, **flags: Any) -> None:
    """Scan many listings from a manifest (path[,listing_id][,brand][,product]); rows sharing a listing_id are one listing.

    Writes one JSON line per listing to OUT: the same result as POST /v1/scan, or {"listing_id", "error", "status"} for
    a listing that cannot be scanned. Decoding overlaps the model (--workers threads, batches of --batch-size photos).
    Run it again with the same --out after an interruption: listings already written are skipped.
    Listings without a listing_id are identified by their photo's path as written in the manifest.
    """
    settings = make_settings(**{**flags, **({"decode_workers": workers} if workers is not None else {})}).for_serving()
    listings = read_listings(listings_csv)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise click.ClickException(f"{out} is being written by another scan-batch run") from exc
        done = resume_point(out)
        todo = [listing for listing in listings if listing.listing_id not in done]
        summary: dict[str, Any] = {
            "listings": len(listings), "skipped": len(listings) - len(todo), "scanned": 0, "errors": 0, "photos": 0
        }  # fmt: skip
        # The model batch is --batch-size; enough listings are kept in flight to fill the next batches while one runs.
        window = 4 * settings.embedder.batch_size + 2 * settings.throughput.decode_workers  # resolved by for_serving
        settings = settings.updated(batch_max_size=settings.embedder.batch_size, queue_max_photos=window + 1024)
        with open_core(settings) as core, ScanBatcher(core.pipeline, settings) as batcher:
            started = time.perf_counter()  # scanning only, not loading the model and index
            bar = tqdm(total=sum(len(x.paths) for x in todo), desc="scanning", unit="photo", disable=not sys.stderr.isatty())
            for listing, answer in _scan(batcher, todo, record, window):
                _write(fh, answer)
                summary["errors" if "error" in answer else "scanned"] += 1
                summary["photos"] += 0 if "error" in answer else len(listing.paths)
                bar.update(len(listing.paths))
            bar.close()
            seconds = time.perf_counter() - started
    summary.update(seconds=round(seconds, 3), photos_per_s=round(summary["photos"] / seconds, 1) if seconds else None)
    click.echo(json.dumps({"out": str(out), **summary}, indent=2))


def _scan(batcher: ScanBatcher, todo: list[Listing], record: bool, window: int) -> Iterator[tuple[Listing, dict[str, Any]]]:
    """Submit listings while at most `window` photos are in flight; yield answers in manifest order."""
    pending: deque[tuple[Listing, Future[ScanResult] | dict[str, Any]]] = deque()
    in_flight = 0
    for listing in todo:
        try:
            future: Future[ScanResult] | dict[str, Any] = batcher.submit(
                ScanRequest(_photos(listing), listing.brand, listing.product, listing.listing_id, record, "cli:scan-batch")
            )
        except OSError as exc:
            future = _error(listing, f"cannot read a photo: {exc}", 400)
        except ServiceNotReady:  # shutting down: the run stops, as before, rather than answering the rest with errors
            raise
        except DomainError as exc:  # the status POST /v1/scan would answer
            future = _error(listing, str(exc), domain_error_status(exc)[0])
        pending.append((listing, future))
        in_flight += len(listing.paths)
        while in_flight > window:
            done, answer = _answer(*pending.popleft())
            in_flight -= len(done.paths)
            yield done, answer
    while pending:
        yield _answer(*pending.popleft())


def _answer(listing: Listing, future: Future[ScanResult] | dict[str, Any]) -> tuple[Listing, dict[str, Any]]:
    if isinstance(future, dict):
        return listing, future
    try:
        return listing, future.result().plain()
    except ImageRejected as exc:
        return listing, _error(listing, str(exc), exc.status)
    except ServiceNotReady:
        raise
    except DomainError as exc:
        return listing, _error(listing, str(exc), domain_error_status(exc)[0])
