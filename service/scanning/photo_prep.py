"""A scan's photos made ready for the model: declared type checked, decoded, resized to the model input, hashed.

The micro-batcher (service/scanning/batching.py) prepares each listing in its decoding threads. With `decode_processes` set,
those threads hand the work to that many worker processes instead (`ProcessPreparer`): on a machine with many cores
the service's one interpreter lock would otherwise cap decoding. Part of a photo's preparation holds the lock, so by
Amdahl's law threads stop gaining at a few times one core however many cores there are; processes scale with the
cores. The price: the processes start with the service (a fork server imports the service once; each worker then
holds memory of its own), and photos and model inputs are copied through pipes, which costs CPU per photo. The
measurements: benchmarks/README.md, section "GPU", "Decoding in worker processes".
"""

from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext, SpawnContext

import numpy as np

from embeddings.decode import DecodedImage, ImageLimits, decode_image
from embeddings.errors import ImageRejected
from embeddings.perceptual_hash import perceptual_hash
from embeddings.preprocess import PreprocessSpec, to_pixels
from embeddings.runtimes import lower_thread_priority
from service.errors import ServiceNotReady

log = logging.getLogger(__name__)

ACCEPTED_CONTENT_TYPES = {"image/jpeg", "image/png", "image/webp", "image/jpg", "application/octet-stream", ""}


@dataclass(frozen=True)
class PhotoInput:
    data: bytes
    filename: str | None = None
    content_type: str | None = None


@dataclass(frozen=True)
class PreparedPhoto:
    """A photo's model input (for `spec`) and perceptual hash, made off the inference thread."""

    sha256: str
    pixels: np.ndarray  # (size, size, 3) uint8, cropped and resized for `spec`; the model normalises
    spec: PreprocessSpec
    phash: int


def decode_photo(photo: PhotoInput, limits: ImageLimits, draft_size: int | None) -> DecodedImage:
    """Check the declared type and decode; JPEGs decode straight to about `draft_size` (the model's input)."""
    declared = (photo.content_type or "").split(";")[0].strip().lower()
    if declared not in ACCEPTED_CONTENT_TYPES:
        raise ImageRejected(f"unsupported content type {declared!r}: send image/jpeg, image/png or image/webp", 415)
    decoded = decode_image(photo.data, limits, draft_size)
    if declared.startswith("image/") and declared.replace("jpg", "jpeg") != decoded.media_type:
        raise ImageRejected(f"declared {declared} but the bytes are {decoded.format}", 415)
    return decoded


def decode_listing(photos: Sequence[PhotoInput], limits: ImageLimits, draft_size: int | None) -> list[DecodedImage]:
    """Every photo of a listing decoded; an ImageRejected names the photo that failed (number and file name)."""
    decoded: list[DecodedImage] = []
    for number, photo in enumerate(photos, start=1):
        try:
            decoded.append(decode_photo(photo, limits, draft_size))
        except ImageRejected as exc:
            name = f" ({photo.filename})" if photo.filename else ""
            raise ImageRejected(f"photo {number}{name}: {exc}", exc.status) from exc
    return decoded


def prepare_decoded(decoded: DecodedImage, spec: PreprocessSpec) -> PreparedPhoto:
    """One decoded photo's model input and perceptual hash."""
    return PreparedPhoto(decoded.sha256, to_pixels([decoded.image], spec)[0], spec, perceptual_hash(decoded.image))


def prepare_listing(photos: Sequence[PhotoInput], limits: ImageLimits, spec: PreprocessSpec) -> list[PreparedPhoto]:
    """Decode (JPEGs at about the model's input size), resize and hash one listing's photos; one resampling each.

    Raises ImageRejected naming the photo that failed.
    """
    return [prepare_decoded(decoded, spec) for decoded in decode_listing(photos, limits, spec.size)]


def _serve(conn: Connection, nice: int) -> None:
    """A decoding process: prepares the listings its decoding thread sends until it gets None or the pipe closes."""
    import torch

    torch.set_num_threads(1)  # one of many: its resizes use one core
    lower_thread_priority(nice)
    conn.send(_READY)
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):  # the service went away
            return
        if request is None:
            return
        try:
            conn.send((True, prepare_listing(*request)))
        except Exception as exc:  # ImageRejected and anything unexpected: raised again in the service
            try:
                conn.send((False, exc))
            except Exception:  # an exception that does not pickle: its text still reaches the service
                conn.send((False, RuntimeError(f"{type(exc).__name__}: {exc}")))


_READY = "ready"
START_TIMEOUT_S = 300.0


@functools.cache
def _context() -> ForkServerContext | SpawnContext:
    """Workers fork from a fork server that imported this module (and the program's main module) once, so they share
    those pages instead of each importing them again; where there is no fork server (not POSIX), they are spawned."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["__main__", __name__])
    return context


class _Worker:
    """One decoding process and the service's end of its pipe."""

    def __init__(self, nice: int) -> None:
        context = _context()
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, nice), name="scan-decode-process", daemon=True)
        self.process.start()
        child.close()

    def wait_ready(self, timeout: float) -> None:
        if not self.conn.poll(timeout) or self.conn.recv() != _READY:
            raise ServiceNotReady(f"a decoding process did not start within {timeout:.0f} s")

    def stop(self) -> None:
        with contextlib.suppress(OSError):  # already gone
            self.conn.send(None)
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


class ProcessPreparer:
    """`prepare_listing` in `processes` worker processes, one listing at a time each; a worker that dies is
    replaced, and the listing it was preparing fails with ServiceNotReady (503): the service keeps running.

    Not forked from the service: it runs model, FAISS and OpenMP threads that a forked child would inherit in whatever
    state they were. They fork from multiprocessing's fork server, a single-threaded process started for them. A plain
    pipe per worker, not concurrent.futures' process pool: the pool's manager and feeder threads took more of the
    service's interpreter lock per listing than the decoding they took away.
    """

    def __init__(self, processes: int, nice: int = 0, start_timeout_s: float = START_TIMEOUT_S) -> None:
        self.nice = nice
        self.start_timeout_s = start_timeout_s
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        try:
            # Start every worker now, not at the first scans: each imports the service's modules (seconds).
            started = [_Worker(nice) for _ in range(processes)]
            self._workers.extend(started)
            for worker in started:
                worker.wait_ready(start_timeout_s)
        except BaseException:
            self.close()
            raise
        for worker in started:
            self._idle.put(worker)

    def pids(self) -> list[int]:
        """The worker processes' ids (for tests and diagnostics)."""
        with self._lock:
            return [worker.process.pid or 0 for worker in self._workers]

    def prepare(self, photos: Sequence[PhotoInput], limits: ImageLimits, spec: PreprocessSpec) -> list[PreparedPhoto]:
        worker = self._idle.get()
        try:
            worker.conn.send((photos, limits, spec))
            ok, answer = worker.conn.recv()
        except (EOFError, OSError) as exc:  # the worker died (killed, out of memory, a crash in a decoder)
            try:
                worker = self._replace(worker)
            finally:  # the new worker, or the dead one again when none started: the next listing tries once more
                self._idle.put(worker)
            raise ServiceNotReady("a decoding process stopped unexpectedly; retry the scan") from exc
        self._idle.put(worker)
        if not ok:
            raise answer
        result: list[PreparedPhoto] = answer
        return result

    def _replace(self, dead: _Worker) -> _Worker:
        log.error(
            "decoding process %s stopped unexpectedly (exit code %s): starting a new one", dead.process.pid, dead.process.exitcode
        )
        dead.stop()
        worker = _Worker(self.nice)
        try:
            worker.wait_ready(self.start_timeout_s)
        except BaseException:
            worker.stop()
            raise
        with self._lock:
            self._workers[self._workers.index(dead)] = worker
        return worker

    def close(self) -> None:
        with self._lock:
            workers, self._workers = self._workers, []
        for worker in workers:
            worker.stop()
