"""Removes reference photo files that no catalog row references: a write that crashed before its commit."""

from __future__ import annotations

import logging
import threading
import time

from reference_catalog import BlobStore, CatalogRepository

log = logging.getLogger(__name__)


def collect_orphan_blobs(catalog: CatalogRepository, blobs: BlobStore, lock: threading.RLock, min_age_s: float = 3600.0) -> int:
    """Delete image files no catalog row references, and stale temp files; returns how many. Only files older than
    `min_age_s`, so that a write in flight in another process (a replica, the CLI) is never touched."""
    with lock:
        referenced = catalog.referenced_sha256s()
        cutoff = time.time() - min_age_s
        removed = 0
        for path in blobs.files():
            if path.name not in referenced and path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
                removed += 1
    if removed:
        log.info("removed %d orphaned blob files", removed)
    return removed
