"""The listings of a bulk scan, read from a manifest: CSV, JSON lines or Parquet, one row per photo.

Columns (keys): `path` (relative to the manifest's folder), and optionally `listing_id`, `brand`, `product`; others are
ignored. Rows that share a listing_id are one listing (brand and product from its first row); a row without one is a
listing of its own, identified by its path as written (the same path listed twice on its own: one listing).
The format follows the file's name: `.jsonl`, `.ndjson` or `.json` (one JSON object per line), `.parquet` or `.pq`
(pyarrow, installed with `pip install 'counterfeit-scan[ray]'`), anything else CSV with a header.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reference_catalog.text import control_character

JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
PARQUET_SUFFIXES = (".parquet", ".pq")
PARQUET_HINT = "pip install 'counterfeit-scan[ray]' (it brings pyarrow)"


class ListingsError(ValueError):
    """The manifest cannot be read as listings; the message names the file and the line (or row) at fault."""


@dataclass
class Listing:
    """Rows of the manifest that share a listing_id (or one row without one, keyed by its path)."""

    listing_id: str
    line: int
    paths: list[Path] = field(default_factory=list)
    brand: str | None = None
    product: str | None = None


def read_listings(manifest: Path) -> list[Listing]:
    """Listings in manifest order; see the module docstring for the formats and columns."""
    suffix = manifest.suffix.lower()
    try:
        if suffix in PARQUET_SUFFIXES:
            return _listings(manifest, "row", _parquet_rows(manifest))
        if suffix in JSON_SUFFIXES:
            with open(manifest, encoding="utf-8-sig") as fh:
                return _listings(manifest, "line", _json_rows(manifest, fh))
        with open(manifest, newline="", encoding="utf-8-sig") as fh:
            return _listings(manifest, "line", _csv_rows(manifest, fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ListingsError(f"cannot read {manifest}: {exc}") from exc


def _listings(manifest: Path, unit: str, rows: Iterable[tuple[int, Mapping[str, Any]]]) -> list[Listing]:
    listings: dict[str, Listing] = {}
    for line, row in rows:
        path = _text(row.get("path"))
        if not path:
            raise ListingsError(f"{manifest} {unit} {line}: empty path")
        listing_id = _text(row.get("listing_id"))
        for name, value in (("path", path), ("listing_id", listing_id)):
            bad = control_character(value)
            if bad:  # ids are echoed in every answer line and are what a resumed run skips by: printable only
                raise ListingsError(f"{manifest} {unit} {line}: {name} contains control characters ({bad})")
        key = listing_id or path
        if not listing_id and key in listings:
            continue  # the same photo listed twice on its own: one listing
        listing = listings.setdefault(
            key, Listing(key, line, brand=_text(row.get("brand")) or None, product=_text(row.get("product")) or None)
        )
        listing.paths.append(manifest.parent / path)
    return list(listings.values())


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _csv_rows(manifest: Path, fh: Iterable[str]) -> Iterator[tuple[int, Mapping[str, Any]]]:
    reader = csv.DictReader(fh)
    if "path" not in (reader.fieldnames or []):
        raise ListingsError(f"{manifest}: the header needs a 'path' column (and optionally listing_id, brand, product)")
    yield from enumerate(reader, start=2)


def _json_rows(manifest: Path, fh: Iterable[str]) -> Iterator[tuple[int, Mapping[str, Any]]]:
    for line, text in enumerate(fh, start=1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except ValueError as exc:
            raise ListingsError(f"{manifest} line {line}: not JSON ({exc})") from exc
        if not isinstance(row, dict):
            raise ListingsError(f"{manifest} line {line}: not a JSON object with a 'path' key")
        yield line, row


def _parquet_rows(manifest: Path) -> Iterator[tuple[int, Mapping[str, Any]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ListingsError(f"{manifest}: reading Parquet needs pyarrow: {PARQUET_HINT}") from exc
    try:
        table = pq.read_table(manifest)
    except Exception as exc:  # pyarrow's errors (ArrowInvalid, ...) are not OSErrors
        raise ListingsError(f"cannot read {manifest} as Parquet: {exc}") from exc
    if "path" not in table.column_names:
        raise ListingsError(f"{manifest}: it needs a 'path' column (and optionally listing_id, brand, product)")
    wanted = [name for name in ("path", "listing_id", "brand", "product") if name in table.column_names]
    yield from enumerate(table.select(wanted).to_pylist(), start=1)
