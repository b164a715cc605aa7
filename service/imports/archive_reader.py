"""Reads an uploaded zip or tar.gz archive without trusting it; never `extractall`.

Every member name is checked (no absolute paths, no `..`, no NUL), links and device/fifo members refuse the whole
archive, the member count and the expanded size are bounded before anything is read (declared sizes) and again while
reading (actual bytes), and the gzip stream itself is bounded, so that tar headers cannot inflate either. Regular
files are copied to numbered files in a work folder; their archive paths are only ever dictionary keys.
"""

from __future__ import annotations

import gzip
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Literal

ArchiveFormat = Literal["zip", "tar.gz"]
ARCHIVE_FORMATS: tuple[ArchiveFormat, ...] = ("zip", "tar.gz")

COPY_CHUNK = 1024 * 1024
MAX_SINGLE_READ = 16 * 1024 * 1024  # nothing legitimate asks for more at once: tar headers are small, data is chunked
TAR_OVERHEAD_PER_MEMBER = 3 * 512  # header, a long-name or pax header, padding


class ArchiveRejected(Exception):
    """The archive as a whole is refused; the message is the reason given to the user."""


@dataclass(frozen=True)
class ArchiveLimits:
    max_expanded_bytes: int  # all members together, uncompressed
    max_members: int
    max_member_bytes: int  # bigger members are listed with a problem, never copied out


@dataclass(frozen=True)
class ArchiveMember:
    path: str  # normalised: relative, '/'-separated, no '.' parts
    size: int
    stored: Path | None  # the copy of its bytes, or None when it was not copied (see `problem`)
    problem: str | None = None

    def read(self) -> bytes:
        if self.stored is None:
            raise ValueError(f"member {self.path} was not copied out: {self.problem}")
        return self.stored.read_bytes()


@dataclass
class ExtractedArchive:
    format: ArchiveFormat
    members: dict[str, ArchiveMember] = field(default_factory=dict)  # regular files by path, in archive order


def detect_format(head: bytes) -> ArchiveFormat | None:
    """zip or tar.gz by the first bytes, whatever the file is called."""
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[:2] == b"\x1f\x8b":
        return "tar.gz"
    return None


NESTED_ARCHIVE_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "zip"),
    (b"PK\x05\x06", "zip"),
    (b"\x1f\x8b", "gzip"),
    (b"7z\xbc\xaf\x27\x1c", "7z"),
    (b"Rar!\x1a\x07", "rar"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)


def nested_archive_kind(data: bytes) -> str | None:
    """The kind of archive these bytes are, if they are one (nested archives are reported, never unpacked)."""
    for signature, kind in NESTED_ARCHIVE_SIGNATURES:
        if data.startswith(signature):
            return kind
    if len(data) >= 262 and data[257:262] == b"ustar":
        return "tar"
    return None


def safe_member_path(name: str) -> str:
    """The member's normalised relative path; ArchiveRejected when it could land outside the archive's folder."""
    if "\x00" in name:
        raise ArchiveRejected(f"member {name!r} has a NUL character in its name")
    text = name.replace("\\", "/")
    if text.startswith("/") or (len(text) >= 2 and text[1] == ":" and text[0].isalpha()):
        raise ArchiveRejected(f"member {name!r} has an absolute path; members must be relative to the archive")
    parts = [part for part in PurePosixPath(text).parts if part not in ("", ".")]
    if ".." in parts:
        raise ArchiveRejected(f"member {name!r} escapes the archive ('..' in its path)")
    return "/".join(parts)


class _Budget:
    """Bytes the members may still expand to, counted as they are actually read."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, count: int) -> None:
        self.used += count
        if self.used > self.limit:
            raise ArchiveRejected(f"the archive expands past {self.limit} bytes (import_max_expanded_bytes)")


def _copy_member(source: IO[bytes], target: Path, declared: int, path: str, budget: _Budget) -> int:
    copied = 0
    with open(target, "wb") as out:
        while chunk := source.read(COPY_CHUNK):
            copied += len(chunk)
            if copied > declared:
                raise ArchiveRejected(f"member {path!r} expands past its declared size of {declared} bytes")
            budget.take(len(chunk))
            out.write(chunk)
    return copied


class _Extraction:
    def __init__(self, fmt: ArchiveFormat, work_dir: Path, limits: ArchiveLimits) -> None:
        self.result = ExtractedArchive(fmt)
        self.work_dir = work_dir
        self.limits = limits
        self.budget = _Budget(limits.max_expanded_bytes)
        self.entries = 0

    def count_entry(self) -> None:
        self.entries += 1
        if self.entries > self.limits.max_members:
            raise ArchiveRejected(f"the archive has more than {self.limits.max_members} members (import_max_members)")

    def add(self, path: str, size: int, source: IO[bytes] | None, problem: str | None = None) -> None:
        """Record a regular file; copy its bytes out when `source` is given and it is within the member bound."""
        if path in self.result.members:
            raise ArchiveRejected(f"member {path!r} appears more than once in the archive")
        if problem is None and size > self.limits.max_member_bytes:
            problem = f"{size} bytes, more than the {self.limits.max_member_bytes} bytes an image may have"
        if problem is not None or source is None:
            self.result.members[path] = ArchiveMember(path, size, None, problem or "not read")
            return
        target = self.work_dir / f"{len(self.result.members):06d}"
        copied = _copy_member(source, target, size, path, self.budget)
        self.result.members[path] = ArchiveMember(path, copied, target)


def extract_archive(archive: Path, fmt: ArchiveFormat, work_dir: Path, limits: ArchiveLimits) -> ExtractedArchive:
    """Check every member of `archive` and copy its regular files into `work_dir` (created empty)."""
    work_dir.mkdir(parents=True, exist_ok=False)
    extraction = _Extraction(fmt, work_dir, limits)
    if fmt == "zip":
        _extract_zip(archive, extraction)
    else:
        _extract_tar_gz(archive, extraction)
    return extraction.result


# --- zip ------------------------------------------------------------------------------------------------------
def _extract_zip(archive: Path, extraction: _Extraction) -> None:
    limits = extraction.limits
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            if len(infos) > limits.max_members:
                count = len(infos)
                raise ArchiveRejected(f"the archive has {count} members, more than {limits.max_members} (import_max_members)")
            declared = sum(info.file_size for info in infos)
            if declared > limits.max_expanded_bytes:
                raise ArchiveRejected(
                    f"the archive declares {declared} bytes once expanded, more than {limits.max_expanded_bytes} "
                    "(import_max_expanded_bytes)"
                )
            for info in infos:
                _zip_member(zf, info, extraction)
    except ArchiveRejected:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
        raise ArchiveRejected(f"the zip archive is corrupt: {exc}") from exc


def _zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, extraction: _Extraction) -> None:
    extraction.count_entry()
    path = safe_member_path(info.filename)
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        raise ArchiveRejected(f"member {info.filename!r} is a symbolic link; links are not allowed in an import")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise ArchiveRejected(f"member {info.filename!r} is a device, fifo or socket; only regular files are allowed")
    if info.is_dir() or kind == stat.S_IFDIR or not path:
        return
    if info.flag_bits & 0x1:
        extraction.add(path, info.file_size, None, "encrypted; encrypted members are not imported")
        return
    if info.file_size > extraction.limits.max_member_bytes:
        extraction.add(path, info.file_size, None)
        return
    try:
        source = zf.open(info)
    except NotImplementedError as exc:
        extraction.add(path, info.file_size, None, f"cannot be read: {exc}")
        return
    with source:
        extraction.add(path, info.file_size, source)


# --- tar.gz ---------------------------------------------------------------------------------------------------
class _BoundedStream:
    """The decompressed tar stream, refusing to go past `limit` bytes or to hand out one huge read (tar headers
    with a made-up size would otherwise be read into memory whole)."""

    def __init__(self, raw: gzip.GzipFile, limit: int) -> None:
        self._raw = raw
        self._limit = limit
        self._position = 0
        self._work = 0  # bytes decompressed, rewinds included

    def _charge(self, target: int) -> None:
        if target > self._limit:
            raise ArchiveRejected(f"the archive expands past {self._limit} bytes (import_max_expanded_bytes)")
        self._work += target - self._position if target >= self._position else target
        if self._work > 2 * self._limit:
            raise ArchiveRejected("the archive makes the reader go back and forth too much")

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > MAX_SINGLE_READ:
            raise ArchiveRejected(f"a tar header asks for {size} bytes at once; the archive is malformed or hostile")
        self._charge(self._position + size)
        data = self._raw.read(size)
        self._position += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence != 0:
            raise OSError("only absolute seeks are supported")
        self._charge(offset)
        self._position = self._raw.seek(offset)
        return self._position

    def tell(self) -> int:
        return self._position


def _extract_tar_gz(archive: Path, extraction: _Extraction) -> None:
    limits = extraction.limits
    stream_limit = limits.max_expanded_bytes + limits.max_members * TAR_OVERHEAD_PER_MEMBER + 1024 * 1024
    try:
        with open(archive, "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
            bounded = _BoundedStream(unzipped, stream_limit)
            with tarfile.open(fileobj=bounded, mode="r:") as tf:  # type: ignore[call-overload]
                for member in tf:
                    _tar_member(tf, member, extraction)
    except ArchiveRejected:
        raise
    except (tarfile.TarError, zlib.error, EOFError, OSError, ValueError) as exc:
        raise ArchiveRejected(f"the tar.gz archive is corrupt or not a tar archive: {exc}") from exc


def _tar_member(tf: tarfile.TarFile, member: tarfile.TarInfo, extraction: _Extraction) -> None:
    extraction.count_entry()
    path = safe_member_path(member.name)
    if member.issym() or member.islnk():
        kind = "symbolic" if member.issym() else "hard"
        raise ArchiveRejected(f"member {member.name!r} is a {kind} link; links are not allowed in an import")
    if member.ischr() or member.isblk() or member.isfifo():
        raise ArchiveRejected(f"member {member.name!r} is a device or fifo; only regular files are allowed")
    if member.isdir() or (not path and not member.isreg()):
        return
    if member.issparse() or not member.isreg():
        raise ArchiveRejected(f"member {member.name!r} is of an unsupported type; only regular files are allowed")
    if not path:
        raise ArchiveRejected(f"member {member.name!r} has no name")
    limit = extraction.limits.max_expanded_bytes
    if extraction.budget.used + member.size > limit:
        raise ArchiveRejected(f"the archive expands past {limit} bytes (import_max_expanded_bytes)")
    if member.size > extraction.limits.max_member_bytes:
        extraction.budget.take(member.size)  # skipped, but its bytes still count
        extraction.add(path, member.size, None)
        return
    source = tf.extractfile(member)
    if source is None:
        raise ArchiveRejected(f"member {member.name!r} cannot be read")
    with source:
        extraction.add(path, member.size, source)
