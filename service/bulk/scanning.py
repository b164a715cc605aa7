"""Listings through the micro-batcher (service/scanning/batching.py), answered in order: what `scan-batch` runs in its
own process (`--engine local`) and in each Ray actor (`--engine ray`), so both answer alike.

Each listing's answer is the scan result's JSON (`ScanResult.plain()`, as POST /v1/scan) or an error row
{"listing_id", "error", "status", "paths"} with the status POST /v1/scan would have answered.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from embeddings import ImageRejected
from service.api.errors import domain_error_status
from service.bulk.listings import Listing
from service.config import Settings
from service.errors import DomainError, ServiceNotReady
from service.scanning.batching import ScanBatcher
from service.scanning.photo_prep import PhotoInput
from service.scanning.pipeline import ScanRequest
from service.scanning.result import ScanResult

Answer = dict[str, Any]
ACTOR = "cli:scan-batch"


def window_for(settings: Settings) -> int:
    """Photos kept in flight: enough listings to fill the next model batches while one runs (settings resolved by
    `Settings.for_serving` or set outright)."""
    return 4 * settings.embedder.batch_size + 2 * settings.throughput.decode_workers


def batcher_settings(settings: Settings) -> Settings:
    """The batcher's settings for a bulk run: model batches of --batch-size, a queue that never refuses the window."""
    return settings.updated(batch_max_size=settings.embedder.batch_size, queue_max_photos=window_for(settings) + 1024)


def error_row(listing: Listing, detail: str, status: int) -> Answer:
    return {"listing_id": listing.listing_id, "error": detail, "status": status, "paths": [str(p) for p in listing.paths]}


def read_photos(listing: Listing, root: Path | None = None) -> list[PhotoInput]:
    """The listing's photo files; with `root`, relative paths are read from there (an actor whose working folder is not
    the manifest reader's), the error still naming the path as listed."""
    if root is None:
        return [PhotoInput(path.read_bytes(), path.name) for path in listing.paths]
    photos = []
    for path in listing.paths:
        try:
            photos.append(PhotoInput((root / path).read_bytes(), path.name))
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
    return photos


def scan_listings(
    batcher: ScanBatcher,
    todo: Sequence[Listing],
    record: bool,
    window: int,
    root: Path | None = None,
    contain: bool = False,
) -> Iterator[tuple[Listing, Answer]]:
    """Submit listings while at most `window` photos are in flight; yield answers in the order of `todo`.

    With `contain`, an unexpected failure of one listing (anything but a shutdown) is its error row (status 500) rather
    than the end of the run: a Ray actor answers every listing of its block."""
    pending: deque[tuple[Listing, Future[ScanResult] | Answer]] = deque()
    in_flight = 0
    for listing in todo:
        try:
            future: Future[ScanResult] | Answer = batcher.submit(
                ScanRequest(read_photos(listing, root), listing.brand, listing.product, listing.listing_id, record, ACTOR)
            )
        except OSError as exc:
            future = error_row(listing, f"cannot read a photo: {exc}", 400)
        except ServiceNotReady:  # shutting down: the run stops, as before, rather than answering the rest with errors
            raise
        except DomainError as exc:  # the status POST /v1/scan would answer
            future = error_row(listing, str(exc), domain_error_status(exc)[0])
        except Exception as exc:
            if not contain:
                raise
            future = error_row(listing, f"cannot scan: {exc!r}", 500)
        pending.append((listing, future))
        in_flight += len(listing.paths)
        while in_flight > window:
            done, answer = _answer(*pending.popleft(), contain)
            in_flight -= len(done.paths)
            yield done, answer
    while pending:
        yield _answer(*pending.popleft(), contain)


def _answer(listing: Listing, future: Future[ScanResult] | Answer, contain: bool) -> tuple[Listing, Answer]:
    if isinstance(future, dict):
        return listing, future
    try:
        return listing, future.result().plain()
    except ImageRejected as exc:
        return listing, error_row(listing, str(exc), exc.status)
    except ServiceNotReady:
        raise
    except DomainError as exc:
        return listing, error_row(listing, str(exc), domain_error_status(exc)[0])
    except Exception as exc:
        if not contain:
            raise
        return listing, error_row(listing, f"cannot scan: {exc!r}", 500)
