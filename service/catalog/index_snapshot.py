"""Immutable snapshots of the serving index, for processes that only read it (the actors of `scan-batch --engine ray`).

A snapshot is what a scan reads besides the model, frozen at one catalog revision:

    <index_dir>/snapshots/<fingerprint[:16]>-r<revision>/
        index.faiss            the vector index (embeddings.VectorIndex's file, its revision inside)
        refs.json              the catalog's images by index key (`ImageRef`: what scans read labels from)
        near_duplicates.npz    the perceptual hashes of those images (keys int64, hashes uint64)
        snapshot.json          what it is: format, fingerprint, revision, counts; written last

It is written to a temporary folder beside it and renamed into place, so a reader sees a whole snapshot or none; one
that exists already is reused (the same model and catalog revision give the same content). Nothing removes old
snapshots: `rm -r <index_dir>/snapshots` when no bulk run is going on.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from embeddings import VectorIndex
from embeddings.index import IndexOptions
from reference_catalog import ImageRef

SNAPSHOT_FORMAT = 1
MANIFEST = "snapshot.json"


class SnapshotError(RuntimeError):
    """A snapshot that cannot be used (missing, incomplete, of another format or model)."""


@dataclass(frozen=True)
class IndexSnapshot:
    """A snapshot read back: the index and the tables scans read beside it."""

    index: VectorIndex
    refs: dict[int, ImageRef]
    hash_keys: np.ndarray
    hashes: np.ndarray


def snapshot_path(index_dir: Path, fingerprint: str, revision: int) -> Path:
    return index_dir / "snapshots" / f"{fingerprint[:16]}-r{revision}"


def publish(index_dir: Path, index: VectorIndex, refs: Mapping[int, ImageRef], hash_keys: np.ndarray, hashes: np.ndarray) -> Path:
    """Write the snapshot of `index` (at its revision) with `refs` and the hashes of those images; returns its folder,
    reusing the one already there."""
    target = snapshot_path(index_dir, index.fingerprint, index.revision)
    if (target / MANIFEST).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    keep = np.isin(hash_keys, np.fromiter(refs, dtype=np.int64, count=len(refs)))
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        index.save(tmp / "index.faiss")
        rows = [{**asdict(ref), "created_at": ref.created_at.isoformat()} for ref in refs.values()]
        (tmp / "refs.json").write_text(json.dumps(rows, separators=(",", ":")))
        np.savez(tmp / "near_duplicates.npz", keys=hash_keys[keep].astype(np.int64), hashes=hashes[keep].view(np.uint64))
        manifest = {
            "format": SNAPSHOT_FORMAT,
            "fingerprint": index.fingerprint,
            "revision": index.revision,
            "dim": index.dim,
            "vectors": len(index),
            "images": len(rows),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would keep other users' workers out
        try:
            tmp.rename(target)
        except OSError:  # another process published the same snapshot first
            if not (target / MANIFEST).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load(path: Path, options: IndexOptions | None = None) -> IndexSnapshot:
    """Read a snapshot written by `publish`; raises SnapshotError when it is not whole or not of this format."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        if manifest.get("format") != SNAPSHOT_FORMAT:
            raise SnapshotError(f"{path} is an index snapshot of format {manifest.get('format')}, not {SNAPSHOT_FORMAT}")
        index = VectorIndex.load(path / "index.faiss", options)
        rows = json.loads((path / "refs.json").read_text())
        with np.load(path / "near_duplicates.npz") as hashes:
            keys, values = hashes["keys"], hashes["hashes"]
    except (OSError, ValueError, KeyError) as exc:
        raise SnapshotError(f"cannot read the index snapshot {path}: {exc}") from exc
    if (index.fingerprint, index.revision) != (manifest["fingerprint"], manifest["revision"]):
        raise SnapshotError(f"{path}: its index file is not the one its manifest names")
    refs = {int(row["key"]): ImageRef(**{**row, "created_at": datetime.fromisoformat(row["created_at"])}) for row in rows}
    return IndexSnapshot(index, refs, keys.astype(np.int64), values.astype(np.uint64))
