"""Bulk catalog imports: accept an archive at once, run it on one background thread, report progress.

`ImportJobs` lives on the service runtime (`request.app.state.runtime.imports`). `submit` keeps the archive under
`<data_dir>/imports/<job_id>.archive` and a `queued` row in the catalog database, so a restart picks the job up;
the worker thread runs jobs oldest first, resuming `running` ones where their last checkpoint left them.
Replicas of the service on one database (and one shared data directory) each run a worker: a worker runs only a
job it claimed (`ImportJobStore.claim`, a lease of `import_lease_s` under this process's `owner` id), so no two run
the same job; a job whose worker died is taken over once its lease runs out, and one whose worker stopped cleanly
at once (the stop releases it).
Synchronous refusals (service errors, service/errors.py): an empty upload (InvalidRequest), bytes that are not zip or
gzip (UnsupportedFormat), an archive over `import_max_upload_bytes` (TooLarge). Everything else about the archive is
checked by the job.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reference_catalog import AuditEvent
from reference_catalog.text import control_character
from service.access.api_keys import Principal
from service.access.policy import import_submitter, may_read_import
from service.config import Settings
from service.core import ServiceCore
from service.errors import InvalidRequest, InvalidValue, ServiceNotReady, TooLarge, UnsupportedFormat
from service.imports.archive_reader import ARCHIVE_FORMATS, detect_format
from service.imports.job_store import UNFINISHED, ImportJobRow, ImportJobStore, LeaseLost, job_view, new_job_id
from service.imports.runner import WORK_SUFFIX, archive_path, finish_job, imports_dir, run_import_job, work_path

log = logging.getLogger(__name__)

LEFTOVER_MIN_AGE_S = 3600.0  # files of no job, and work folders no live claim uses, are removed once this old
IDLE_POLL_S = 1.0
MAX_FILENAME = 500
MAX_OWNER = 120  # catalog_import_jobs.claimed_by


def _modified_since(path: Path, cutoff: float) -> bool:
    try:
        return path.stat().st_mtime >= cutoff
    except FileNotFoundError:
        return True  # gone already


def new_owner_id() -> str:
    """Who claims jobs: this host and process, and a random part (two workers in one process, a reused pid)."""
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{secrets.token_hex(6)}"[-MAX_OWNER:]


class ImportJobs:
    def __init__(self, settings: Settings, core: Callable[[], ServiceCore | None]) -> None:
        """`core()` returns the loaded core, or None while it loads. Nothing touches the disk before `start`."""
        self.settings = settings
        self._core = core
        self._store: ImportJobStore | None = None
        self._store_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.owner = new_owner_id()  # this worker's name in the jobs' claims

    # --- the worker ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._work, name="catalog-imports", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop after the chunk in progress; an unfinished job resumes at the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("the import worker did not stop within %.0f s", timeout_s)
            self._thread = None

    def _work(self) -> None:
        cleaned = False
        lease_s = self.settings.imports.lease_s
        while not self._stop.is_set():
            core = self._core()
            if core is None:
                self._stop.wait(0.2)
                continue
            try:
                store = self._require_store(core)
                if not cleaned:
                    self._remove_leftovers(store)
                    cleaned = True
                job_id = store.claim(self.owner, lease_s)
                if job_id is None:  # none waiting, or each one held by another replica's live lease
                    self._wake.wait(IDLE_POLL_S)
                    self._wake.clear()
                    continue
                self._run(core, store, job_id)
            except Exception:  # e.g. a locked database: this thread must outlive any one failure
                log.exception("the import worker failed; retrying")
                self._stop.wait(IDLE_POLL_S)

    def _run(self, core: ServiceCore, store: ImportJobStore, job_id: str) -> None:
        try:
            run_import_job(core, store, job_id, self._stop, self.owner)
        except Exception as exc:
            log.exception("import job %s failed", job_id)
            if self._stop.is_set():
                return  # most likely the service closing underneath it: resume at the next start
            try:
                finish_job(self.settings, store, job_id, self.owner, "failed", f"internal error: {type(exc).__name__}: {exc}")
            except LeaseLost:
                log.warning("import job %s: another process holds it now; its failure here is not recorded", job_id)
        finally:
            store.release(job_id, self.owner)  # a job left unfinished (stopping): another replica resumes it at once

    def _remove_leftovers(self, store: ImportJobStore) -> None:
        """Files no job needs any more: those of finished jobs; work folders of unfinished jobs but no live claim's
        (a process that died or lost the job), and files of no job at all (a crash inside `submit`), once older than
        LEFTOVER_MIN_AGE_S. Other replicas share the folder: an unfinished job's archive, the work folder of the
        process that holds its claim, and a recent archive whose row another replica is about to commit are kept."""
        folder = imports_dir(self.settings)
        if not folder.is_dir():
            return
        paths = list(folder.iterdir())
        jobs = store.states(path.name.split(".", 1)[0] for path in paths)
        cutoff = time.time() - LEFTOVER_MIN_AGE_S
        for path in paths:
            job_id = path.name.split(".", 1)[0]
            state, holder = jobs.get(job_id, (None, None))
            if state is not None and state not in UNFINISHED:
                keep = False
            elif state is not None and (path.suffix != WORK_SUFFIX or path == self._holders_work(job_id, holder)):
                keep = True
            else:
                keep = _modified_since(path, cutoff)
            if keep:
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def _holders_work(self, job_id: str, holder: str | None) -> Path | None:
        return None if holder is None else work_path(self.settings, job_id, holder)

    def _require_store(self, core: ServiceCore | None = None) -> ImportJobStore:
        core = core or self._core()
        if core is None:
            raise ServiceNotReady("the model and index are still loading")
        with self._store_lock:
            if self._store is None:
                self._store = ImportJobStore(core.database)
            return self._store

    # --- the interface the HTTP routes and the console use ----------------------------------------------------------
    def submit(self, data: bytes, principal: Principal, filename: str | None = None, split: str | None = None) -> dict[str, Any]:
        """Queue an import of archive bytes; returns the job. A service error for what is wrong at a glance."""
        if not data:
            raise InvalidRequest("the archive is empty")
        limit = self.settings.imports.max_upload_bytes
        if len(data) > limit:
            raise TooLarge(f"the archive is larger than {limit} bytes (import_max_upload_bytes)")
        fmt = detect_format(data[:8])
        if fmt is None:
            raise UnsupportedFormat(f"not a {' or '.join(ARCHIVE_FORMATS)} archive (recognised by its first bytes, not its name)")
        split = (split or "").strip() or None
        if split is not None and len(split) > 200:
            raise InvalidValue("split is longer than 200 characters")
        for field, value in (("split", split), ("the archive's filename", filename)):
            bad = control_character(value or "")
            if bad:  # both are stored and shown with the job
                raise InvalidValue(f"{field} contains control characters ({bad})")
        core = self._core()
        store = self._require_store(core)
        assert core is not None
        job_id = new_job_id()
        path = archive_path(self.settings, job_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:  # the bytes are safe on disk before the job exists
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        row = ImportJobRow(
            job_id=job_id,
            state="queued",
            created_by=principal.key_id,
            role=principal.role,
            brands=sorted(principal.brands),
            filename=filename[:MAX_FILENAME] if filename else None,
            archive_format=fmt,
            archive_bytes=len(data),
            split=split,
            created_at=datetime.now(UTC),
            rows_done=0,
            position=0,
            images_added=0,
            duplicates_skipped=0,
            error_count=0,
            errors=[],
        )
        try:
            store.create(row)
        except Exception:
            path.unlink(missing_ok=True)
            raise
        brand = next(iter(principal.brands)) if len(principal.brands) == 1 else None
        details = {"filename": row.filename, "format": fmt, "bytes": len(data), "split": split}
        core.audit.record(AuditEvent(principal.key_id, "catalog.import.submit", job_id, brand, details))
        self._wake.set()
        return job_view(row)

    def get(self, job_id: str, principal: Principal) -> dict[str, Any] | None:
        """The job, or None when there is none or this caller may not see it (admins see all, others their own)."""
        row = self._require_store().get(job_id)
        if row is None or not may_read_import(principal, row.created_by):
            return None
        return job_view(row)

    def list(self, principal: Principal, limit: int = 50) -> list[dict[str, Any]]:
        """Newest first: every job for admins, the caller's own for other keys."""
        return [job_view(row) for row in self._require_store().recent(import_submitter(principal), limit)]
