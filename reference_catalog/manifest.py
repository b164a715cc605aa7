"""Manifest CSV files: `path,brand,product,label` (+ optional `split`, extra columns ignored).

Cells are written through `csv_cell` (a leading quote before what a spreadsheet would run as a formula) and read
through `from_csv_cell`, so an exported manifest is safe to open in a spreadsheet and imports back unchanged.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from reference_catalog.text import control_character, csv_cell, from_csv_cell

REQUIRED_COLUMNS = ("path", "brand", "product", "label")
MANIFEST_COLUMNS = ("path", "brand", "product", "label", "source", "group")  # what an export writes
CHECKED_COLUMNS = (*MANIFEST_COLUMNS, "split")  # refused with control characters in them
MAX_FIELD_LENGTH = 200


class ManifestError(ValueError):
    """The manifest as a whole cannot be read (missing file, missing columns, not CSV)."""


@dataclass(frozen=True)
class ManifestRow:
    line: int
    path: Path
    brand: str
    product: str
    label: str
    extra: dict[str, str] = field(default_factory=dict)


@dataclass
class ManifestRead:
    rows: list[ManifestRow]
    errors: list[tuple[int, str]]


def read_manifest(
    manifest: Path,
    split: str | None = None,
    labels: Iterable[str] = ("authentic", "counterfeit"),
    require_brand: bool = True,
    split_required: bool = True,
) -> ManifestRead:
    """Read rows, keeping those whose `split` is `split` (all when None); bad rows go to `errors` by line number.

    Paths are relative to the manifest's folder and may not escape it. With `require_brand=False`, brand and
    product may be missing (photos of nothing in the catalog); with `split_required=False`, a manifest without a
    `split` column is taken whole.
    """
    allowed = set(labels)
    if not manifest.is_file():
        raise ManifestError(f"manifest {manifest} does not exist")
    root = manifest.parent.resolve()
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = set(reader.fieldnames or ())
            needed = REQUIRED_COLUMNS if require_brand else ("path", "label")
            missing = [c for c in needed if c not in columns]
            if missing:
                raise ManifestError(
                    f"manifest {manifest} lacks column(s) {', '.join(missing)}; header must have {','.join(needed)}"
                )
            if split is not None and "split" not in columns and not split_required:
                split = None  # a manifest without splits (e.g. distractors) is taken whole
            if split is not None and "split" not in columns:
                raise ManifestError(f"--split {split} given but manifest {manifest} has no 'split' column")
            result = ManifestRead([], [])
            for number, record in enumerate(reader, start=2):
                if split is not None and from_csv_cell((record.get("split") or "").strip()) != split:
                    continue
                row, error = _parse_row(number, record, root, allowed, require_brand)
                if error:
                    result.errors.append((number, error))
                elif row:
                    result.rows.append(row)
            return result
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ManifestError(f"manifest {manifest} is not a readable UTF-8 CSV file: {exc}") from exc


def _parse_row(
    number: int, record: dict[str, str | None], root: Path, allowed: set[str], require_brand: bool
) -> tuple[ManifestRow | None, str | None]:
    values = {k: from_csv_cell((v or "").strip()) for k, v in record.items() if k is not None}
    for name in CHECKED_COLUMNS:
        bad = control_character(values.get(name, ""))
        if bad:
            return None, f"{name} contains a control character ({bad})"
    for name in ("path", "label", *(("brand", "product") if require_brand else ())):
        if not values.get(name):
            return None, f"empty {name}"
        if len(values[name]) > MAX_FIELD_LENGTH and name != "path":
            return None, f"{name} longer than {MAX_FIELD_LENGTH} characters"
    if values["label"] not in allowed:
        return None, f"unknown label {values['label']!r} (expected one of {', '.join(sorted(allowed))})"
    relative = Path(values["path"])
    if relative.is_absolute():
        return None, f"absolute path {values['path']!r} (paths must be relative to the manifest)"
    resolved = (root / relative).resolve()
    if not resolved.is_relative_to(root):
        return None, f"path {values['path']!r} escapes the manifest's folder"
    extra = {k: v for k, v in values.items() if k not in REQUIRED_COLUMNS}
    return ManifestRow(number, resolved, values.get("brand", ""), values.get("product", ""), values["label"], extra), None


ExportRow = tuple[str, str, str, str, str | None, str | None]


def manifest_cells(row: ExportRow) -> list[str]:
    """One `path,brand,product,label,source,group` row as CSV cells, none of which a spreadsheet runs as a formula."""
    return [csv_cell(value or "") for value in row]


def write_manifest(path: Path, rows: Iterable[ExportRow]) -> None:
    """Write `path,brand,product,label,source,group` rows (paths relative to the manifest)."""
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(MANIFEST_COLUMNS)
        for row in rows:
            writer.writerow(manifest_cells(row))
    tmp.replace(path)
