"""What an import archive asks for: rows from its `manifest.csv`, or from `brand/product/<label>/photo` folders.

Rows the caller may not import, paths the archive lacks and files that are not images become per-row errors;
an archive with neither a manifest nor the folder layout, or a manifest that cannot be read, is refused whole.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from reference_catalog import LABELS, ManifestError, read_manifest
from reference_catalog.text import control_character
from service.imports.archive_reader import ArchiveMember, ArchiveRejected, ExtractedArchive

Layout = Literal["manifest", "folders"]
MANIFEST_NAME = "manifest.csv"
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
MAX_SOURCE_LENGTH = 500
# Folder names accepted for each label. Aliases (e.g. "fake") would go here only for labels the catalog has.
LABEL_FOLDERS: dict[str, str] = {label: label for label in LABELS}
OS_METADATA = {".DS_Store", "Thumbs.db", "desktop.ini"}


@dataclass(frozen=True)
class RowError:
    row: int | None  # the manifest's line number; None for the folder layout and archive members
    path: str | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"row": self.row, "path": self.path, "reason": self.reason}


@dataclass(frozen=True)
class PlannedRow:
    row: int | None
    path: str  # as the manifest or the archive names it
    member: ArchiveMember
    brand: str
    product: str
    label: str
    source: str | None
    group: str | None = None  # the manifest's photo shoot

    def error(self, reason: str) -> RowError:
        return RowError(self.row, self.path, reason)


@dataclass
class ImportPlan:
    layout: Layout
    rows: list[PlannedRow] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)


def is_os_metadata(path: str) -> bool:
    """Files that archivers and desktops add on their own (macOS resource forks, Finder and Explorer caches)."""
    parts = path.split("/")
    return parts[0] == "__MACOSX" or parts[-1] in OS_METADATA or parts[-1].startswith("._")


def plan_import(
    archive: ExtractedArchive, work_dir: Path, may_import: Callable[[str], bool], split: str | None = None
) -> ImportPlan:
    """The rows to import. `may_import(brand)` says whether the caller may write to that brand's catalog."""
    files = {path: member for path, member in archive.members.items() if not is_os_metadata(path)}
    if not files:
        raise ArchiveRejected("the archive holds no files")
    root = _wrapping_folder(files)
    if root + MANIFEST_NAME in files:
        return _plan_from_manifest(files, root, files[root + MANIFEST_NAME], work_dir, may_import, split)
    if split is not None:
        raise ArchiveRejected(f"split {split!r} given but the archive has no {MANIFEST_NAME} (folders have no splits)")
    if not any(_label_of(path[len(root) :]) for path in files):
        raise ArchiveRejected(
            f"the archive has no {MANIFEST_NAME} at its top and no brand/product/authentic|counterfeit/ folders of photos"
        )
    return _plan_from_folders(files, root, may_import)


def _wrapping_folder(files: dict[str, ArchiveMember]) -> str:
    """'top/' when everything sits in one folder that holds the manifest or the layout (a zipped folder), else ''."""
    if MANIFEST_NAME in files or any(_label_of(path) for path in files):
        return ""
    tops = {path.split("/", 1)[0] for path in files}
    if len(tops) != 1 or any("/" not in path for path in files):
        return ""
    prefix = tops.pop() + "/"
    if prefix + MANIFEST_NAME in files or any(_label_of(path[len(prefix) :]) for path in files):
        return prefix
    return ""


def _label_of(relative: str) -> str | None:
    """The label of a file at brand/product/<label>/photo, or None when it is not laid out like that."""
    parts = relative.split("/")
    return LABEL_FOLDERS.get(parts[2].lower()) if len(parts) == 4 else None


def _plan_from_folders(files: dict[str, ArchiveMember], root: str, may_import: Callable[[str], bool]) -> ImportPlan:
    plan = ImportPlan("folders")
    for path, member in files.items():  # all under `root`, which `_wrapping_folder` checked
        bad = control_character(path)
        if bad:  # its brand, product or source would carry it: refused, and shown escaped
            plan.errors.append(RowError(None, ascii(path)[1:-1], f"the name contains control characters ({bad})"))
            continue
        parts = path[len(root) :].split("/")
        label = _label_of(path[len(root) :])
        if label is None:
            where = f"folder {parts[2]!r} is not a label ({' or '.join(LABELS)})" if len(parts) == 4 else "not in the layout"
            plan.errors.append(RowError(None, path, f"{where}: expected brand/product/authentic|counterfeit/photo.jpg"))
            continue
        if PurePosixPath(path).suffix.lower() not in IMAGE_SUFFIXES:
            plan.errors.append(RowError(None, path, f"not an image file: only {', '.join(IMAGE_SUFFIXES)} files are imported"))
            continue
        brand, product = parts[0].strip(), parts[1].strip()
        if not may_import(brand):
            plan.errors.append(RowError(None, path, f"forbidden: this key may not import into brand {brand!r}"))
            continue
        plan.rows.append(PlannedRow(None, path, member, brand, product, label, path[:MAX_SOURCE_LENGTH]))
    return plan


def _plan_from_manifest(
    files: dict[str, ArchiveMember],
    root: str,
    manifest: ArchiveMember,
    work_dir: Path,
    may_import: Callable[[str], bool],
    split: str | None,
) -> ImportPlan:
    if manifest.stored is None or manifest.size > MAX_MANIFEST_BYTES:
        raise ArchiveRejected(f"{root}{MANIFEST_NAME} cannot be read: {manifest.problem or 'too large'}")
    # The CLI's parser, on a copy alone in its folder: row paths resolve against that folder, never the real disk.
    folder = work_dir / "manifest"
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / MANIFEST_NAME
    copy.write_bytes(manifest.read())
    try:
        read = read_manifest(copy, split, labels=LABELS)
    except ManifestError as exc:
        raise ArchiveRejected(str(exc).replace(str(copy), f"{root}{MANIFEST_NAME}")) from exc
    plan = ImportPlan("manifest", errors=[RowError(line, None, reason) for line, reason in read.errors])
    base = folder.resolve()
    for row in read.rows:
        relative = row.path.relative_to(base).as_posix()
        member = files.get(root + relative)
        if member is None:
            plan.errors.append(RowError(row.line, relative, "no such file in the archive"))
        elif not may_import(row.brand):
            plan.errors.append(RowError(row.line, relative, f"forbidden: this key may not import into brand {row.brand!r}"))
        else:
            # A source column is taken as it is (empty: none), so that an export comes back unchanged; else the path.
            source = (row.extra["source"] or None) if "source" in row.extra else relative
            source = source[:MAX_SOURCE_LENGTH] if source else None
            group = (row.extra.get("group") or "")[:MAX_SOURCE_LENGTH] or None
            plan.rows.append(PlannedRow(row.line, relative, member, row.brand, row.product, row.label, source, group))
    plan.errors.sort(key=lambda error: error.row or 0)
    return plan
