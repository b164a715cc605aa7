"""The file a `VectorIndex` (embeddings/index.py) is saved to: a header, then its serialized faiss parts.

Format 2: `CSIDX2\\n`, the header's length (8 bytes, little-endian), the header (JSON: dimensions, model fingerprint,
catalog revision, kind, training size, each part's length), then the parts: the exact flat store and, for kind ivf,
the ivf index. Format 1 (`CSIDX1\\n`, read only) held a header and one flat store. A file is written to a temporary
name of its own (service replicas may share the folder), fsynced and renamed over the old one, so a reader (or a
crash) sees the old file or the new one, never half; the last rename wins when two processes save at once;
parts are streamed from the file on reading, so a large index is never held twice in memory.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import faiss
import numpy as np

_faiss: Any = faiss  # members the stubs lack (PyCallbackIOReader)

_MAGIC_V1 = b"CSIDX1\n"  # header, then one serialized IndexIDMap2(IndexFlatIP) (read only: older files)
_MAGIC = b"CSIDX2\n"  # header (with the kind), then length-prefixed parts: the flat store, and the IVF for kind ivf
_MAX_HEADER = 1 << 20  # bytes; a larger header length means a damaged file


def write_index_file(path: Path, header: dict[str, Any], parts: Sequence[np.ndarray]) -> None:
    """Write `header` (the parts' lengths added) and the serialized `parts` to a temp file, fsync, rename over `path`."""
    header = {**header, "parts": [len(part) for part in parts]}
    path.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own: replicas sharing the folder (other machines, the same pid in their containers) save at once
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.{secrets.token_hex(4)}.tmp")
    header_bytes = json.dumps(header).encode()
    with open(tmp, "wb") as fh:
        fh.write(_MAGIC)
        fh.write(len(header_bytes).to_bytes(8, "little"))
        fh.write(header_bytes)
        for part in parts:
            fh.write(part.tobytes())
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def read_index_file(path: Path) -> tuple[dict[str, Any], list[faiss.Index]]:
    """The header and the faiss parts of an index file (either format); raises ValueError or RuntimeError when it is
    not whole."""
    with open(path, "rb") as fh:
        magic = fh.read(len(_MAGIC))
        if magic not in (_MAGIC, _MAGIC_V1):
            raise ValueError(f"{path} is not a counterfeit-scan index file")
        size = int.from_bytes(fh.read(8), "little")
        if size > _MAX_HEADER:
            raise ValueError(f"{path}: damaged header")
        header: dict[str, Any] = json.loads(fh.read(size))
        lengths = [None] if magic == _MAGIC_V1 else [int(length) for length in header["parts"]]
        return header, [_read_index(fh, length) for length in lengths]


def _read_index(fh: BinaryIO, length: int | None) -> faiss.Index:
    """One serialized faiss index streamed from `fh` (no copy of its bytes in memory), `length` bytes if given."""
    left = [length]

    def read(size: int) -> bytes:
        limit = left[0]
        data = fh.read(size if limit is None else min(size, limit))
        if limit is not None:
            left[0] = limit - len(data)
        return data

    index = faiss.read_index(_faiss.PyCallbackIOReader(read))  # already of its own class (and owned here)
    if left[0]:
        raise ValueError(f"index part ends {left[0]} bytes early")
    return index
