"""Where `scan-batch` writes its answers, one per listing, so that a rerun after a crash skips what was written (no
listing twice, none lost). Each output is held by one run at a time (an exclusive `flock`).

- JSON lines (`JsonLinesOutput`): one answer per line, appended and flushed as it comes. A rerun reads the
  listing_ids already there; a torn last line (a crash mid-write) is cut off and its listing scanned again.
- Parquet (`ParquetOutput`): a folder of part files `part-<run>-<n>.parquet`, each written under a temporary name
  and renamed when whole (every `PART_ROWS` answers or `PART_SECONDS`, and at the end), so a crash loses at most the
  answers not yet in a part, and those are scanned again; a rerun reads the listing_ids of the parts there.
  Columns: the scan result's scalar fields as typed columns (listing_id, scan_id, created_at, risk, verdict,
  calibrated, score, brand, product, index_version, photos_kept), its nested fields (calibration, features, model,
  authenticity_head, images, reasons) as JSON text, and for an error row `error`, `status` and `paths` (JSON text);
  the other columns of a row are null. `read_parquet_answers` turns the rows back into the very dicts the JSON lines
  output holds. Any Parquet reader takes the folder as one table (`pyarrow.parquet.read_table(OUT)`,
  `pandas.read_parquet(OUT)`, DuckDB `read_parquet('OUT/*.parquet')`).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType, UnionType
from typing import IO, TYPE_CHECKING, Any, Literal, Union, get_args, get_origin

from service.bulk.listings import PARQUET_HINT
from service.scanning.result import ScanResult

if TYPE_CHECKING:
    import pyarrow as pa

Answer = dict[str, Any]
Warn = Callable[[str], None]
OutputFormat = Literal["jsonl", "parquet"]
PART_ROWS = 1000
PART_SECONDS = 60.0
SCAN_FIELDS = [name for name in ScanResult.model_fields if name != "feedback"]  # `plain()`'s keys, in its order
ERROR_FIELDS = ["error", "status", "paths"]


class OutputError(ValueError):
    """The output cannot be used as it is; the message says what to fix."""


def output_format(out: Path, requested: OutputFormat | None) -> OutputFormat:
    """Parquet when asked for or when OUT ends with .parquet; else JSON lines."""
    return requested or ("parquet" if out.suffix.lower() == ".parquet" else "jsonl")


class JsonLinesOutput:
    """Answers appended to a JSON lines file; see the module docstring."""

    def __init__(self, out: Path, warn: Warn) -> None:
        self.out = out
        self.warn = warn
        self._fh: IO[str] | None = None
        self.done: set[str] = set()

    def __enter__(self) -> JsonLinesOutput:
        if self.out.is_dir():
            raise OutputError(f"{self.out} is a folder: JSON lines go to a file (or pass --format parquet for part files)")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.out, "a", encoding="utf-8")
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._fh.close()
            raise OutputError(f"{self.out} is being written by another scan-batch run") from exc
        self.done = resume_point(self.out, self.warn)
        return self

    def write(self, answer: Answer) -> None:
        assert self._fh is not None, "write inside `with`"
        self._fh.write(json.dumps(answer, separators=(",", ":")) + "\n")
        self._fh.flush()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._fh is not None:
            self._fh.close()


def resume_point(out: Path, warn: Warn) -> set[str]:
    """listing_ids already answered in `out`; a torn last line (a crash mid-write) is cut off, to be scanned again."""
    if not out.exists():
        return set()
    done: set[str] = set()
    with open(out, "r+b") as fh:
        *lines, tail = fh.read().split(b"\n")  # `tail`: bytes after the last newline, empty unless a write was torn
        keep = 0
        for number, raw in enumerate(lines, start=1):
            listing_id = _listing_id(raw)
            if listing_id is None:
                if number < len(lines) or tail:
                    raise OutputError(f"{out} line {number} is not a scan result; fix or remove it, then run again")
                tail = raw  # a last line that is not JSON (garbage after a crash): torn as well
                break
            done.add(listing_id)
            keep += len(raw) + 1
        if tail:
            warn(f"{out}: its last line was cut short by an interruption; scanning that listing again")
            fh.truncate(keep)
    return done


def _listing_id(line: bytes) -> str | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    value = record.get("listing_id") if isinstance(record, dict) else None
    return str(value) if value is not None else None


class ParquetOutput:
    """Answers written to a folder of Parquet part files; see the module docstring."""

    def __init__(self, out: Path, warn: Warn, part_rows: int | None = None, part_seconds: float | None = None) -> None:
        self.out = out
        self.warn = warn
        self.part_rows = part_rows or PART_ROWS
        self.part_seconds = part_seconds or PART_SECONDS
        self.done: set[str] = set()
        self._rows: list[dict[str, Any]] = []
        self._flushed_at = time.monotonic()
        self._run = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        self._parts = 0
        self._lock: IO[bytes] | None = None

    def __enter__(self) -> ParquetOutput:
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise OutputError(f"writing Parquet needs pyarrow: {PARQUET_HINT}") from exc
        if self.out.exists() and not self.out.is_dir():
            raise OutputError(f"{self.out} is a file: Parquet output is a folder of part files; name another --out")
        self.out.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.out / ".lock", "ab")
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._lock.close()
            raise OutputError(f"{self.out} is being written by another scan-batch run") from exc
        for stale in self.out.glob("*.tmp"):  # a part a crash left half written: its answers are scanned again
            stale.unlink()
        for part in sorted(self.out.glob("*.parquet")):
            try:
                ids = pq.read_table(part, columns=["listing_id"]).column("listing_id").to_pylist()
            except Exception as exc:  # pyarrow's errors are not OSErrors
                raise OutputError(f"{part} is not a part file of scan results ({exc}); remove it, then run again") from exc
            self.done.update(str(x) for x in ids if x is not None)
        return self

    def write(self, answer: Answer) -> None:
        self._rows.append(_parquet_row(answer))
        if len(self._rows) >= self.part_rows or time.monotonic() - self._flushed_at >= self.part_seconds:
            self.flush()

    def flush(self) -> None:
        """Write the answers gathered so far as one more part file (atomically)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._flushed_at = time.monotonic()
        if not self._rows:
            return
        name = f"part-{self._run}-{self._parts:05d}.parquet"
        tmp = self.out / (name + ".tmp")
        pq.write_table(pa.Table.from_pylist(self._rows, schema=parquet_schema()), tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        tmp.rename(self.out / name)
        self._parts += 1
        self._rows = []

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if exc is None:
                self.flush()
            else:
                try:  # the answers in hand are good: keep them, unless writing is what failed
                    self.flush()
                except Exception as error:
                    self.warn(f"{self.out}: {len(self._rows)} answers not saved ({error}); a rerun scans them again")
        finally:
            if self._lock is not None:
                self._lock.close()


def open_output(out: Path, fmt: OutputFormat, warn: Warn) -> JsonLinesOutput | ParquetOutput:
    return ParquetOutput(out, warn) if fmt == "parquet" else JsonLinesOutput(out, warn)


# --- the Parquet columns ----------------------------------------------------------------------------------------
def parquet_schema() -> pa.Schema:
    import pyarrow as pa

    fields = [pa.field(name, _arrow_type(ScanResult.model_fields[name].annotation)) for name in SCAN_FIELDS]
    fields += [pa.field("error", pa.string()), pa.field("status", pa.int64()), pa.field("paths", pa.string())]
    return pa.schema(fields)


def _scalar(annotation: Any) -> Any:
    """`float | None` -> float; anything else as it is."""
    args = get_args(annotation)
    if get_origin(annotation) in (Union, UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else annotation
    return annotation


def _arrow_type(annotation: Any) -> pa.DataType:
    import pyarrow as pa

    kind = _scalar(annotation)
    return {float: pa.float64(), bool: pa.bool_(), int: pa.int64()}.get(kind, pa.string())  # str, Literal, JSON text


def _json_columns() -> set[str]:
    """The columns that hold JSON text: the scan result's nested fields, and an error row's paths."""
    return {name for name in SCAN_FIELDS if not _is_scalar(ScanResult.model_fields[name].annotation)} | {"paths"}


def _is_scalar(annotation: Any) -> bool:
    kind = _scalar(annotation)
    return get_origin(kind) is Literal or kind in (str, float, bool, int)


def _parquet_row(answer: Answer) -> dict[str, Any]:
    nested = _json_columns()
    return {key: json.dumps(value, separators=(",", ":")) if key in nested else value for key, value in answer.items()}


def read_parquet_answers(out: Path) -> list[Answer]:
    """The answers of a Parquet output (a folder of parts, or one part), as the JSON lines output holds them."""
    import pyarrow.parquet as pq

    parts = sorted(out.glob("*.parquet")) if out.is_dir() else [out]
    nested = _json_columns()
    answers: list[Answer] = []
    for part in parts:
        for row in pq.read_table(part).to_pylist():
            keys = ["listing_id", *ERROR_FIELDS] if row.get("error") is not None else SCAN_FIELDS
            answers.append({key: json.loads(row[key]) if key in nested else row[key] for key in keys})
    return answers
