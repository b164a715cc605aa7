"""A catalog as an archive that POST /v1/catalog/imports (and `catalog import`, once unpacked) reads back.

`manifest.csv` first (path,brand,product,label,source,group; the CLI's `catalog export` format), then each image once,
as `images/<sha256>.<ext>`. Zip (images stored, they are compressed already) or tar.gz, written to any writable
stream: `stream_catalog_archive` runs the writer on a thread and hands the bytes to an HTTP response as they come.
"""

from __future__ import annotations

import csv
import io
import queue
import tarfile
import threading
import time
import zipfile
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import BinaryIO, Literal

import anyio

from reference_catalog import ImageRef
from reference_catalog.manifest import MANIFEST_COLUMNS, manifest_cells
from service.core import ServiceCore

ExportFormat = Literal["zip", "tar.gz"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("zip", "tar.gz")
SUFFIXES = {"image/png": ".png", "image/webp": ".webp"}
PIPE_CHUNK = 256 * 1024
PIPE_DEPTH = 8


def catalog_refs(core: ServiceCore, brand: str | None) -> list[ImageRef]:
    """The images an export of `brand` (None: the whole catalog) holds, in a stable order."""
    refs = [ref for ref in core.catalog.all_images() if brand is None or ref.brand == brand]
    return sorted(refs, key=lambda ref: (ref.brand, ref.product, ref.created_at, ref.image_id))


def image_path(ref: ImageRef) -> str:
    return f"images/{ref.sha256}{SUFFIXES.get(ref.media_type, '.jpg')}"


def manifest_bytes(refs: Sequence[ImageRef], groups: Mapping[int, str]) -> bytes:
    """The manifest of `refs`, with each image's photo shoot (`groups`, by image key) so that heads refitted after a
    re-import keep shoots whole. Cells a spreadsheet would run as formulas get a leading quote (`manifest_cells`),
    which imports drop again."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for ref in refs:
        writer.writerow(manifest_cells((image_path(ref), ref.brand, ref.product, ref.label, ref.source, groups.get(ref.key))))
    return text.getvalue().encode("utf-8")


def write_catalog_archive(
    core: ServiceCore, brand: str | None, fmt: ExportFormat, out: BinaryIO, refs: Sequence[ImageRef] | None = None
) -> int:
    """Write `brand`'s catalog (None: all of it) as a `fmt` archive to `out`; returns the number of images listed."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {', '.join(EXPORT_FORMATS)}")
    refs = catalog_refs(core, brand) if refs is None else refs
    files: dict[str, str] = {}  # archive path -> sha256: identical bytes in two products are stored once
    for ref in refs:
        files.setdefault(image_path(ref), ref.sha256)
    manifest = manifest_bytes(refs, core.catalog.shoot_groups())
    if fmt == "zip":
        with zipfile.ZipFile(out, "w") as zf:
            zf.writestr("manifest.csv", manifest, compress_type=zipfile.ZIP_DEFLATED)
            for path, sha in files.items():
                zf.writestr(path, core.blobs.get(sha), compress_type=zipfile.ZIP_STORED)
    else:
        with tarfile.open(fileobj=out, mode="w|gz") as tf:
            _add_to_tar(tf, "manifest.csv", manifest)
            for path, sha in files.items():
                _add_to_tar(tf, path, core.blobs.get(sha))
    return len(refs)


def _add_to_tar(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = int(time.time())
    tf.addfile(info, io.BytesIO(data))


class _Cancelled(Exception):
    pass


class _PipeWriter:
    """A write-only stream that passes its bytes through a bounded queue, in chunks of about PIPE_CHUNK."""

    def __init__(self, chunks: queue.Queue[bytes | BaseException | None], cancelled: threading.Event, chunk_bytes: int) -> None:
        self._chunks = chunks
        self._cancelled = cancelled
        self._chunk_bytes = chunk_bytes
        self._buffer = bytearray()

    def write(self, data: bytes) -> int:
        self._buffer += data
        if len(self._buffer) >= self._chunk_bytes:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self._buffer:
            self.put(bytes(self._buffer))
            self._buffer.clear()

    def put(self, item: bytes | BaseException | None) -> None:
        while True:
            if self._cancelled.is_set():
                raise _Cancelled
            try:
                self._chunks.put(item, timeout=0.5)
                return
            except queue.Full:
                continue


async def stream_catalog_archive(
    core: ServiceCore, brand: str | None, fmt: ExportFormat, refs: Sequence[ImageRef], chunk_bytes: int = PIPE_CHUNK
) -> AsyncGenerator[bytes, None]:
    """The archive's bytes as they are written, with only a few chunks in memory; stops writing if the client goes."""
    chunks: queue.Queue[bytes | BaseException | None] = queue.Queue(PIPE_DEPTH)
    cancelled = threading.Event()
    pipe = _PipeWriter(chunks, cancelled, chunk_bytes)

    def produce() -> None:
        try:
            write_catalog_archive(core, brand, fmt, pipe, refs)  # type: ignore[arg-type]
            pipe.flush()
            pipe.put(None)
        except _Cancelled:
            return
        except BaseException as exc:  # handed to the response, which cuts the download short
            try:
                pipe.put(exc)
            except _Cancelled:
                return

    threading.Thread(target=produce, name="catalog-export", daemon=True).start()
    try:
        while True:
            item = await anyio.to_thread.run_sync(_next_chunk, chunks)
            if item is _NOTHING_YET:
                continue
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, bytes)
            yield item
    finally:
        cancelled.set()


_NOTHING_YET = object()


def _next_chunk(chunks: queue.Queue[bytes | BaseException | None]) -> object:
    try:
        return chunks.get(timeout=0.5)
    except queue.Empty:
        return _NOTHING_YET
