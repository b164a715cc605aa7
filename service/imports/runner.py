"""Runs one catalog import job: check the whole archive first, then import its rows in chunks, checkpointing each.

A restart re-checks the archive (deterministic: same bytes, same plan) and resumes at the stored position; rows a
crash left imported but not checkpointed come back as duplicates, which `CatalogWriter.import_rows` skips.
"""

from __future__ import annotations

import logging
import shutil
import threading
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
from service.imports.job_store import ImportJobRow, ImportJobStore, JobState, Progress
from service.imports.plan import PlannedRow, RowError, plan_import
from service.scanning.photo_prep import PhotoInput

log = logging.getLogger(__name__)


def imports_dir(settings: Settings) -> Path:
    return settings.storage.data_dir / "imports"


def archive_path(settings: Settings, job_id: str) -> Path:
    return imports_dir(settings) / f"{job_id}.archive"


def work_path(settings: Settings, job_id: str) -> Path:
    return imports_dir(settings) / f"{job_id}.work"


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


def run_import_job(core: ServiceCore, store: ImportJobStore, job_id: str, stop: threading.Event) -> None:
    """Run (or resume) a job until it finishes or `stop` is set; a stopped job stays `running` for the next start.

    Before the archive is read and before each chunk, the job checks that its key may still act; a job whose key
    was revoked (or deleted) ends `failed` with the reason, and adds nothing more."""
    settings = core.settings
    job = store.start(job_id)
    refused = key_refusal(core, job)
    if refused:
        _finish(core, store, job_id, "failed", refused)
        return
    archive, work = archive_path(settings, job_id), work_path(settings, job_id)
    if not archive.is_file():
        _finish(core, store, job_id, "failed", f"the uploaded archive is no longer on disk ({archive.name})")
        return
    shutil.rmtree(work, ignore_errors=True)
    try:
        extracted = extract_archive(archive, job.archive_format, work / "members", archive_limits(settings))  # type: ignore[arg-type]
        plan = plan_import(extracted, work, partial(may_manage_brand, job_principal(job)), job.split)
    except ArchiveRejected as exc:
        _finish(core, store, job_id, "failed", str(exc))
        return
    if job.rows_total is None:
        job = store.planned(job_id, plan.layout, len(plan.rows) + len(plan.errors), [e.as_dict() for e in plan.errors])
    step = settings.imports.chunk_rows
    for start in range(job.position, len(plan.rows), step):
        if stop.is_set():
            return
        refused = key_refusal(core, job)
        if refused:
            _finish(core, store, job_id, "failed", refused)
            return
        chunk = plan.rows[start : start + step]
        store.advance(job_id, _import_chunk(core, chunk, start, job.created_by))
    _finish(core, store, job_id, "succeeded")


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


def _finish(core: ServiceCore, store: ImportJobStore, job_id: str, state: JobState, failure: str | None = None) -> None:
    settings = core.settings
    shutil.rmtree(work_path(settings, job_id), ignore_errors=True)
    job = store.finish(job_id, state, failure)
    archive_path(settings, job_id).unlink(missing_ok=True)  # only now: a crash before `finish` must find it again
    details: dict[str, Any] = {"state": state, "rows_total": job.rows_total, "images_added": job.images_added,
                               "duplicates_skipped": job.duplicates_skipped, "error_count": job.error_count}  # fmt: skip
    if failure:
        details["failure"] = failure
    core.audit.record(AuditEvent(job.created_by, "catalog.import.finish", job_id, _single_brand(job), details))
    log.info("import job %s %s: %s", job_id, state, failure or details)


def _single_brand(job: ImportJobRow) -> str | None:
    return job.brands[0] if len(job.brands) == 1 else None
