"""Runs one catalog import job: check the whole archive first, then import its rows in chunks, checkpointing each.

A restart re-checks the archive (deterministic: same bytes, same plan) and resumes at the stored position; rows a
crash left imported but not checkpointed come back as duplicates, which `CatalogWriter.import_rows` skips.

The job runs under its claim (job_store.py): the caller claimed it for `owner`; the lease is renewed before each
chunk, at each checkpoint and by a heartbeat thread (extracting a large archive, or a slow chunk, outlasts a lease).
When a renewal or a checkpoint finds that another process holds the job now (this one stalled past its lease), the
job is left to that process: nothing more is written for it here. Another process resuming the job reads the same
archive (`<data_dir>/imports/<job_id>.archive`, on the shared data directory) into a work folder of its own, so a
takeover never meets the first process's half-written one; the process that finishes the job removes them all.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

from reference_catalog import AuditEvent
from service.access.api_keys import LOCAL_ADMIN, Principal
from service.access.policy import may_manage_brand
from service.catalog.writer import ImportRow
from service.config import Settings
from service.core import ServiceCore
from service.imports.archive_reader import ArchiveLimits, ArchiveRejected, extract_archive, nested_archive_kind
from service.imports.job_store import ImportJobRow, ImportJobStore, JobState, LeaseLost, Progress
from service.imports.plan import PlannedRow, RowError, plan_import
from service.scanning.photo_prep import PhotoInput

log = logging.getLogger(__name__)


def imports_dir(settings: Settings) -> Path:
    return settings.storage.data_dir / "imports"


def archive_path(settings: Settings, job_id: str) -> Path:
    return imports_dir(settings) / f"{job_id}.archive"


WORK_SUFFIX = ".work"


def work_path(settings: Settings, job_id: str, owner: str) -> Path:
    """The folder `owner` extracts the job's archive into: one per process, `<job_id>.<owner digest>.work`."""
    digest = hashlib.sha256(owner.encode()).hexdigest()[:16]
    return imports_dir(settings) / f"{job_id}.{digest}{WORK_SUFFIX}"


def work_paths(settings: Settings, job_id: str) -> list[Path]:
    """Every process's work folder of the job."""
    folder = imports_dir(settings)
    return sorted(folder.glob(f"{job_id}.*{WORK_SUFFIX}")) if folder.is_dir() else []


def job_principal(job: ImportJobRow) -> Principal:
    """Who the job acts for: the submitting key as it was at submission."""
    return Principal(job.created_by, job.role, frozenset(job.brands))  # type: ignore[arg-type]


def archive_limits(settings: Settings) -> ArchiveLimits:
    return ArchiveLimits(
        max_expanded_bytes=settings.imports.max_expanded_bytes,
        max_members=settings.imports.max_members,
        max_member_bytes=settings.limits.max_image_bytes,
    )


def key_refusal(core: ServiceCore, job: ImportJobRow) -> str | None:
    """Why the job may not import anything more (None: it may). A job acts for its key: once the key is revoked or
    gone, it stops. One submitted with auth disabled acts for the local admin, as long as auth stays disabled."""
    if job.created_by == LOCAL_ADMIN.key_id:
        if core.settings.access.auth_disabled:
            return None
        return "stopped: it was submitted while auth was disabled, and auth is now on; submit it again with a key"
    refusal = core.keys.refusal(job.created_by)
    return None if refusal is None else f"stopped: {refusal}; nothing more is imported for it"


class JobLease:
    """`owner`'s claim on one job while it runs: renewed by a heartbeat every third of the lease; `lost` once a
    renewal finds another holder (or the job finished elsewhere)."""

    def __init__(self, store: ImportJobStore, job_id: str, owner: str, lease_s: float) -> None:
        self.store, self.job_id, self.owner, self.lease_s = store, job_id, owner, lease_s
        self.lost = threading.Event()
        self._done = threading.Event()

    def renew(self) -> bool:
        """Extend the lease now; False (and `lost` set) when this process no longer holds the job."""
        if not self.lost.is_set() and not self.store.renew(self.job_id, self.owner, self.lease_s):
            log.warning("import job %s: %s lost its claim; another process took it over", self.job_id, self.owner)
            self.lost.set()
        return not self.lost.is_set()

    @contextmanager
    def heartbeat(self) -> Iterator[JobLease]:
        thread = threading.Thread(target=self._beat, name=f"import-lease-{self.job_id}", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._done.set()
            thread.join()

    def _beat(self) -> None:
        while not self._done.wait(self.lease_s / 3):
            try:
                if not self.renew():
                    return
            except Exception:  # e.g. the database unreachable for a moment: the next beat tries again
                log.exception("import job %s: could not renew its lease", self.job_id)


def run_import_job(core: ServiceCore, store: ImportJobStore, job_id: str, stop: threading.Event, owner: str) -> None:
    """Run (or resume) a job that `owner` claimed, until it finishes, `stop` is set, or another process takes it
    over; a stopped job stays `running` for the next claim.

    Before the archive is read and before each chunk, the job checks that its key may still act; a job whose key
    was revoked (or deleted) ends `failed` with the reason, and adds nothing more."""
    lease = JobLease(store, job_id, owner, core.settings.imports.lease_s)
    try:
        with lease.heartbeat():
            outcome = _run(core, store, lease, stop)
        if outcome is not None:  # after the heartbeat stopped: it must not find the job finished and cry wolf
            _finish(core, store, job_id, owner, *outcome)
    except LeaseLost:
        log.warning("import job %s: %s lost its claim; left to the process that holds it now", job_id, owner)
    finally:
        shutil.rmtree(work_path(core.settings, job_id, owner), ignore_errors=True)


Outcome = tuple[JobState, str | None]  # how a job ends: its state and failure


def _run(core: ServiceCore, store: ImportJobStore, lease: JobLease, stop: threading.Event) -> Outcome | None:
    """The job's work; how it ends, or None when it stopped (or lost its claim) before the end."""
    settings = core.settings
    job_id, owner, lease_s = lease.job_id, lease.owner, lease.lease_s
    job = store.start(job_id, owner, lease_s)
    refused = key_refusal(core, job)
    if refused:
        return "failed", refused
    archive, work = archive_path(settings, job_id), work_path(settings, job_id, owner)
    if not archive.is_file():
        return "failed", f"the uploaded archive is no longer on disk ({archive.name})"
    shutil.rmtree(work, ignore_errors=True)  # this process's own, from a run it did not finish
    try:
        extracted = extract_archive(archive, job.archive_format, work / "members", archive_limits(settings))  # type: ignore[arg-type]
        plan = plan_import(extracted, work, partial(may_manage_brand, job_principal(job)), job.split)
    except ArchiveRejected as exc:
        return "failed", str(exc)
    if job.rows_total is None:
        errors = [e.as_dict() for e in plan.errors]
        job = store.planned(job_id, owner, lease_s, plan.layout, len(plan.rows) + len(plan.errors), errors)
    step = settings.imports.chunk_rows
    for start in range(job.position, len(plan.rows), step):
        if stop.is_set() or not lease.renew():
            return None
        refused = key_refusal(core, job)
        if refused:
            return "failed", refused
        chunk = plan.rows[start : start + step]
        store.advance(job_id, owner, lease_s, _import_chunk(core, chunk, start, job.created_by))
    return "succeeded", None


def _import_chunk(core: ServiceCore, chunk: list[PlannedRow], start: int, actor: str) -> Progress:
    errors: list[RowError] = []
    rows: list[ImportRow] = []
    for number, planned in enumerate(chunk):
        if planned.member.stored is None:
            errors.append(planned.error(f"not imported: {planned.member.problem}"))
            continue
        data = planned.member.read()
        nested = nested_archive_kind(data)
        if nested is not None:
            errors.append(planned.error(f"a nested {nested} archive; archives inside the archive are not unpacked"))
            continue
        name = PurePosixPath(planned.path).name
        photo = PhotoInput(data, name)
        rows.append(ImportRow(str(number), photo, planned.brand, planned.product, planned.label, planned.source, planned.group))
    summary = core.writer.import_rows(rows, actor=actor)
    errors.extend(chunk[int(number)].error(reason) for number, reason in summary.errors or [])
    errors.sort(key=lambda error: (error.row or 0, error.path or ""))
    return Progress(len(chunk), start + len(chunk), summary.added, summary.duplicates, [e.as_dict() for e in errors])


def finish_job(
    settings: Settings, store: ImportJobStore, job_id: str, owner: str, state: JobState, failure: str | None = None
) -> ImportJobRow:
    """End the job (LeaseLost, and nothing written, when `owner` no longer holds it), then remove its files: the
    archive, and every process's work folder of it."""
    job = store.finish(job_id, owner, state, failure)
    for work in work_paths(settings, job_id):
        shutil.rmtree(work, ignore_errors=True)
    archive_path(settings, job_id).unlink(missing_ok=True)  # only now: a crash before `finish` must find it again
    return job


def _finish(
    core: ServiceCore, store: ImportJobStore, job_id: str, owner: str, state: JobState, failure: str | None = None
) -> None:
    job = finish_job(core.settings, store, job_id, owner, state, failure)
    details: dict[str, Any] = {"state": state, "rows_total": job.rows_total, "images_added": job.images_added,
                               "duplicates_skipped": job.duplicates_skipped, "error_count": job.error_count}  # fmt: skip
    if failure:
        details["failure"] = failure
    core.audit.record(AuditEvent(job.created_by, "catalog.import.finish", job_id, _single_brand(job), details))
    log.info("import job %s %s: %s", job_id, state, failure or details)


def _single_brand(job: ImportJobRow) -> str | None:
    return job.brands[0] if len(job.brands) == 1 else None
