"""Dynamic micro-batching: the photos of concurrent scans run through the model together.

One `ScanBatcher` per service; it runs the stages of the one scan pipeline (service/scanning/pipeline.py) on its
threads. A scan is admitted (or refused, Overloaded, when `queue_max_photos` photos are
already in flight), decoded and preprocessed in a thread pool (`decode_workers`, JPEGs decoded straight to about the
model's input size), then queued for the inference threads (`inference_workers` of them, each running the model on
`threads` cores: on CPU by default one single-threaded worker per model core, `Settings.for_serving`). Each takes
whatever is queued, up to `batch_max_size` photos and its share of the queue (queued photos / workers), waiting at
most `batch_max_wait_ms` after the oldest one when fewer are there, and runs:

    one model forward pass (`embed`) ─► the listings whose last photos it embedded ─► (scorer thread) one index
    search per brand/product scope (`search`) ─► `score`, `record` and answer each listing on its own future

A listing's photos may be split between batches, so that two workers embed a four-photo listing side by side (less
latency for a lone listing: benchmarks/README.md, "Served throughput") and no batch outgrows the size at which the model
runs fastest. Each listing is pinned to the serving model (`ModelSlot.model`) when its first photos are taken, so a
model switch never mixes versions within a listing.
Scoring and recording run on a second thread, overlapping the next batch's forward pass.
`counterfeit-scan scan-batch` drives the same machinery through `submit`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import faiss
import numpy as np

from embeddings.batch_sizing import CPU_BATCH_CEILING
from embeddings.embedder import Embeddings
from embeddings.runtimes import lower_thread_priority, name_os_thread
from service.config import Settings
from service.errors import Overloaded, ServiceNotReady
from service.metrics import ServiceMetrics
from service.models.snapshot import ModelSlot, ServingModel
from service.scanning.photo_prep import PreparedPhoto, ProcessPreparer, prepare_listing
from service.scanning.pipeline import ScanPipeline, ScanRequest, Searched, concatenate, pixels
from service.scanning.result import ScanResult

log = logging.getLogger(__name__)


UNMEASURED_BATCH_LIMIT = CPU_BATCH_CEILING  # batch_max_size 0 means "measure" (ServiceRuntime); a batcher made without measuring


@dataclass
class ScanJob:
    """One listing on its way through the batcher."""

    request: ScanRequest
    future: Future[ScanResult] = field(default_factory=Future)
    prepared: list[PreparedPhoto] = field(default_factory=list)
    queued_at: float = 0.0
    model: ServingModel | None = None  # pinned when its first photos are taken: every photo is embedded by it
    embedded: Embeddings | None = None  # filled piece by piece
    remaining: int = 0  # photos not embedded yet

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


@dataclass(frozen=True)
class Piece:
    """Photos `start:stop` of a listing, queued for the model: a whole listing, or what a batch left of it."""

    job: ScanJob
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


def model_input(pipeline: ScanPipeline, model: ServingModel, pieces: Sequence[Piece]) -> np.ndarray:
    """Stack the pieces' model inputs; photos prepared for another model (a switch meanwhile) are prepared again."""
    photos: list[PreparedPhoto] = []
    for piece in pieces:
        prepared = piece.job.prepared[piece.start : piece.stop]
        if any(photo.spec != model.embedder.preprocess for photo in prepared):
            prepared = pipeline.prepare(piece.job.request.photos[piece.start : piece.stop], model)
        photos.extend(prepared)
    return pixels(photos)


def search_jobs(pipeline: ScanPipeline, model: ServingModel, jobs: Sequence[ScanJob], vectors: np.ndarray) -> list[Searched]:
    """One index search per brand/product scope for the whole batch; each listing's hits and the index version."""
    offsets = np.cumsum([0, *(len(job.prepared) for job in jobs)])
    groups: dict[tuple[str | None, str | None], list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault((job.request.brand, job.request.product), []).append(i)
    out: list[Searched] = [([], "")] * len(jobs)
    for (brand, product), members in groups.items():
        rows = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in members])
        hits, version = pipeline.search(model, vectors[rows], brand, product)
        start = 0
        for i in members:
            count = int(offsets[i + 1] - offsets[i])
            out[i] = (hits[start : start + count], version)
            start += count
    return out


def finish_jobs(
    pipeline: ScanPipeline, model: ServingModel, jobs: Sequence[ScanJob], embedded: Embeddings, metrics: ServiceMetrics | None
) -> None:
    """Search, score, record and answer each listing of a batch embedded by `model`."""
    started = time.perf_counter()
    try:
        searched = search_jobs(pipeline, model, jobs, embedded.vectors)
    except Exception as exc:
        for job in jobs:
            job.fail(exc)
        return
    if metrics is not None:
        metrics.search_seconds.observe(time.perf_counter() - started)
    offset = 0
    answered: list[tuple[ScanJob, ScanResult]] = []
    for job, found in zip(jobs, searched, strict=True):
        count = len(job.prepared)
        try:
            result = pipeline.score(model, job.request, job.prepared, embedded.rows(offset, offset + count), found)
        except Exception as exc:
            job.fail(exc)
        else:
            answered.append((job, result))
        offset += count
    try:  # the batch's records in one transaction: a scan is answered only once its record is stored
        pipeline.record([(result, job.request) for job, result in answered if job.request.record])
    except Exception as exc:
        for job, _ in answered:
            job.fail(exc)
    else:
        for job, result in answered:
            if not job.future.done():  # failed meanwhile (the service closing): its other photos were dropped
                job.future.set_result(result)
    if metrics is not None:
        metrics.finish_seconds.observe(time.perf_counter() - started)


def _start_decode_thread(nice: int) -> None:
    name_os_thread()
    lower_thread_priority(nice)


def _start_finish_thread() -> None:
    name_os_thread()
    faiss.omp_set_num_threads(1)


class ScanBatcher:
    """Gathers concurrent scans into model batches run on inference threads; see the module docstring."""

    def __init__(self, pipeline: ScanPipeline, settings: Settings | None = None, metrics: ServiceMetrics | None = None) -> None:
        settings = (settings or pipeline.settings).for_serving()  # worker counts as set, or resolved for this machine
        self.pipeline = pipeline
        self.slot: ModelSlot = pipeline.slot
        self.metrics = metrics
        self.max_batch = settings.throughput.batch_max_size or UNMEASURED_BATCH_LIMIT
        self.max_wait = settings.throughput.batch_max_wait_ms / 1000.0
        self.queue_limit = settings.throughput.queue_max_photos
        self.retry_after_s = settings.throughput.retry_after_s
        self.decode_workers = settings.throughput.decode_workers
        # Decoding runs a little below the model (`decode_nice`): on cores both want, a photo already decoded is
        # embedded before the next one is decoded, so bursts queue in order instead of slowing everything in flight.
        self._decode_pool = ThreadPoolExecutor(
            self.decode_workers,
            thread_name_prefix="scan-decode",
            initializer=_start_decode_thread,
            initargs=(settings.throughput.decode_nice,),
        )
        # FAISS searches from this thread run single-threaded: a batch's search is small, and OpenMP workers that
        # spin or wait for a time slice cost more than they save on a machine whose cores the model already uses.
        self._finish_pool = ThreadPoolExecutor(1, thread_name_prefix="scan-finish", initializer=_start_finish_thread)
        # With `decode_processes`, the decoding threads only wait for worker processes that do the work.
        self.preparer = (
            ProcessPreparer(settings.throughput.decode_processes, settings.throughput.decode_nice)
            if settings.throughput.decode_processes
            else None
        )
        self._queue: deque[Piece] = deque()
        self._queued_photos = 0
        self._in_flight = 0  # photos admitted and not yet answered
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._closed = False
        self._threads = [
            threading.Thread(target=self._run, name=f"scan-inference-{i}", daemon=True)
            for i in range(settings.throughput.inference_workers)
        ]
        for thread in self._threads:
            thread.start()

    # --- submitting ---------------------------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Photos admitted and not yet answered."""
        return self._in_flight

    def submit(self, request: ScanRequest) -> Future[ScanResult]:
        """Admit one listing; its future gets the scan result (or the ImageRejected / service error to answer).

        Raises a service error (service/errors.py) for a bad request and Overloaded when `queue_max_photos` photos are in flight.
        """
        job = ScanJob(self.pipeline.check(request))
        photos = request.photos
        with self._lock:
            if self._closed:
                raise ServiceNotReady("the service is shutting down")
            if self._in_flight and self._in_flight + len(photos) > self.queue_limit:
                raise Overloaded(
                    f"the scan queue is full ({self._in_flight} photos in flight, limit {self.queue_limit}); "
                    f"retry in {self.retry_after_s} s",
                    self.retry_after_s,
                )
            self._in_flight += len(photos)
        self._gauge()
        job.future.add_done_callback(lambda _: self._answered(len(photos)))
        try:
            self._decode_pool.submit(self._prepare, job)
        except RuntimeError as exc:  # the pool was shut down meanwhile
            job.fail(ServiceNotReady(f"the service is shutting down ({exc})"))
        return job.future

    async def scan(self, request: ScanRequest) -> ScanResult:
        """`submit` for the event loop: waits for the answer without holding a thread."""
        return await asyncio.wrap_future(self.submit(request))

    def _answered(self, photos: int) -> None:
        with self._lock:
            self._in_flight -= photos
        self._gauge()

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(self._in_flight)

    # --- decode pool --------------------------------------------------------------------------------------------
    def _prepare(self, job: ScanJob) -> None:
        if self._closed:
            job.fail(ServiceNotReady("the service is shutting down"))
            return
        started = time.perf_counter()
        try:
            prepare = prepare_listing if self.preparer is None else self.preparer.prepare
            job.prepared = self.pipeline.prepare(job.request.photos, self.slot.model, prepare)
        except Exception as exc:  # ImageRejected and anything unexpected: answered on the job's future
            job.fail(exc)
            return
        finished = time.perf_counter()
        if self.metrics is not None:
            self.metrics.decode_seconds.observe(finished - started)
        with self._ready:
            closed = self._closed
            if not closed:
                job.queued_at = finished
                job.remaining = len(job.prepared)
                self._queue.append(Piece(job, 0, len(job.prepared)))
                self._queued_photos += len(job.prepared)
                self._ready.notify()
        if closed:  # failed outside the lock: the future's callback (`_answered`) takes it
            job.fail(ServiceNotReady("the service is shutting down"))

    # --- inference thread ---------------------------------------------------------------------------------------
    def _take(self) -> list[Piece] | None:
        """The next batch: at most `max_batch` photos and this worker's share of the queue, in arrival order; the
        listing that does not fit is split, its other photos stay first in the queue."""
        with self._ready:
            while not self._queue and not self._closed:
                self._ready.wait()
            if self._closed:
                return None
            deadline = self._queue[0].job.queued_at + self.max_wait
            while self._queued_photos < self.max_batch and not self._closed:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._ready.wait(remaining)
            # With several workers, each takes its share of the queue: one single-threaded worker must not run 16
            # photos in a row (seconds, for a ViT) while the other takes the next photo and idles.
            share = -(-self._queued_photos // len(self._threads))
            limit = max(1, min(self.max_batch, share))
            pieces: list[Piece] = []
            photos = 0
            while self._queue and photos < limit:
                piece = self._queue.popleft()
                self._queued_photos -= piece.size
                if piece.job.future.done():  # failed while its other photos ran: nothing left to answer
                    continue
                if piece.size > limit - photos:
                    rest = Piece(piece.job, piece.start + limit - photos, piece.stop)
                    self._queue.appendleft(rest)
                    self._queued_photos += rest.size
                    piece = Piece(piece.job, piece.start, rest.start)
                if piece.job.model is None:
                    piece.job.model = self.slot.model
                pieces.append(piece)
                photos += piece.size
            if self._queue:  # what is left (a split listing's other photos): for a worker that may be idle
                self._ready.notify()
            return pieces

    def _run(self) -> None:
        name_os_thread()
        while True:
            pieces = self._take()
            if pieces is None:
                return
            try:
                self._run_batch(pieces)
            except Exception as exc:  # never let one bad batch stop the thread
                log.exception("scan batch failed")
                for piece in pieces:
                    piece.job.fail(exc)

    def _run_batch(self, pieces: list[Piece]) -> None:
        started = time.perf_counter()
        by_model: dict[int, list[Piece]] = {}  # one group but while a model switch is under way
        for piece in pieces:
            by_model.setdefault(id(piece.job.model), []).append(piece)
        done: list[tuple[ServingModel, list[tuple[ScanJob, Embeddings]]]] = []
        for group in by_model.values():
            model = group[0].job.model
            assert model is not None  # pinned by _take
            embedded = self.pipeline.embed(model, model_input(self.pipeline, model, group), self.max_batch)
            done.append((model, self._store(group, embedded)))
        if self.metrics is not None:
            self.metrics.inference_seconds.observe(time.perf_counter() - started)
            self.metrics.batch_size.observe(sum(piece.size for piece in pieces))
            for piece in pieces:
                self.metrics.queue_wait.observe(started - piece.job.queued_at)
        for model, complete in done:
            if complete:
                jobs = [job for job, _ in complete]
                embedded = concatenate([embedded for _, embedded in complete])
                self._finish_pool.submit(finish_jobs, self.pipeline, model, jobs, embedded, self.metrics)

    def _store(self, pieces: Sequence[Piece], embedded: Embeddings) -> list[tuple[ScanJob, Embeddings]]:
        """Put each piece's vectors and detail features in its listing; the listings whose last photos these were,
        with all their rows, in batch order."""
        complete: list[tuple[ScanJob, Embeddings]] = []
        offset = 0
        with self._lock:  # two workers may finish pieces of one listing at once
            for piece in pieces:
                job = piece.job
                if job.embedded is None:
                    n = len(job.prepared)
                    job.embedded = Embeddings(
                        np.empty((n, embedded.vectors.shape[1]), dtype=np.float32),
                        np.empty((n, embedded.details.shape[1]), dtype=np.float32),
                    )
                job.embedded.vectors[piece.start : piece.stop] = embedded.vectors[offset : offset + piece.size]
                job.embedded.details[piece.start : piece.stop] = embedded.details[offset : offset + piece.size]
                offset += piece.size
                job.remaining -= piece.size
                if job.remaining == 0:
                    complete.append((job, job.embedded))
        return complete

    # --- lifecycle ----------------------------------------------------------------------------------------------
    def close(self, timeout: float = 10.0) -> None:
        """Stop taking scans; scans already batched are answered, queued ones fail with 503."""
        with self._ready:
            self._closed = True
            queued = [piece.job for piece in self._queue]
            self._queue.clear()
            self._queued_photos = 0
            self._ready.notify_all()
        for job in queued:  # a listing split between batches fails whole, even if some photos were embedded
            job.fail(ServiceNotReady("the service is shutting down"))
        for thread in self._threads:
            thread.join(timeout)
        self._decode_pool.shutdown(wait=True)
        if self.preparer is not None:
            self.preparer.close()
        self._finish_pool.shutdown(wait=True)

    def __enter__(self) -> ScanBatcher:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
