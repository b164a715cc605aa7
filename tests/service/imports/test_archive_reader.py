"""service/imports/archive_reader.py on its own: names, formats, nested archives, and bounds that hold while reading."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import pytest

from service.imports.archive_reader import (
    ArchiveLimits,
    ArchiveRejected,
    detect_format,
    extract_archive,
    nested_archive_kind,
    safe_member_path,
)
from tests import imaging
from tests.archives import gzip_bytes, tar_gz_bytes, zip_bytes

LIMITS = ArchiveLimits(max_expanded_bytes=1024 * 1024, max_members=100, max_member_bytes=200_000)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("a/b/c.jpg", "a/b/c.jpg"), ("./a//b/./c.jpg", "a/b/c.jpg"), ("a\\b.jpg", "a/b.jpg"), ("dir/", "dir"), ("./", "")],
)
def test_safe_names_are_normalised(name: str, expected: str) -> None:
    assert safe_member_path(name) == expected


@pytest.mark.parametrize(
    "name", ["../a.jpg", "a/../../b.jpg", "a/..", "/etc/passwd", "\\\\server\\share\\x", "C:\\x.jpg", "a\0.jpg"]
)
def test_unsafe_names_refuse_the_archive(name: str) -> None:
    with pytest.raises(ArchiveRejected):
        safe_member_path(name)


def test_formats_and_nested_archives_are_recognised_by_their_bytes() -> None:
    assert detect_format(zip_bytes([("a", b"x")])) == "zip"
    assert detect_format(zip_bytes([])) == "zip"
    assert detect_format(tar_gz_bytes([("a", b"x")])) == "tar.gz"
    assert detect_format(imaging.png(1)) is None
    assert nested_archive_kind(zip_bytes([("a", b"x")])) == "zip"
    assert nested_archive_kind(gzip_bytes(b"x")) == "gzip"
    assert nested_archive_kind(gzip.decompress(tar_gz_bytes([("a", b"x")]))) == "tar"
    assert nested_archive_kind(imaging.jpeg(1)) is None


@pytest.mark.parametrize("build", [zip_bytes, tar_gz_bytes])
def test_members_are_copied_to_numbered_files(tmp_path: Path, build: Callable[[list[tuple[str, bytes]]], bytes]) -> None:
    data = [("x/a.jpg", imaging.jpeg(1)), ("x/b.png", imaging.png(2)), ("big.bin", b"\1" * 300_000)]
    archive = tmp_path / "archive"
    archive.write_bytes(build(data))
    extracted = extract_archive(archive, detect_format(archive.read_bytes()[:8]) or "zip", tmp_path / "work", LIMITS)
    assert list(extracted.members) == ["x/a.jpg", "x/b.png", "big.bin"]
    assert extracted.members["x/a.jpg"].read() == imaging.jpeg(1)
    assert {p.name for p in (tmp_path / "work").iterdir()} == {"000000", "000001"}  # never the members' own names
    big = extracted.members["big.bin"]
    assert big.stored is None and big.problem is not None and "200000 bytes" in big.problem


def test_a_tar_gz_that_expands_past_the_bound_stops_while_reading(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    archive.write_bytes(tar_gz_bytes([(f"z{i}", b"\0" * 150_000) for i in range(10)]))
    with pytest.raises(ArchiveRejected, match="expands past"):
        extract_archive(archive, "tar.gz", tmp_path / "work", LIMITS)
