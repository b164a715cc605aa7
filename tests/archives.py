"""Real zip and tar.gz bytes for the import tests, hostile ones included (links, devices, escaping names, bombs)."""

from __future__ import annotations

import csv
import gzip
import io
import stat
import tarfile
import time
import warnings
import zipfile
from collections.abc import Iterable, Sequence

Members = Iterable[tuple[str, bytes]]


def zip_bytes(members: Members, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf, warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Duplicate name", UserWarning)  # some tests want a name twice
        for name, data in members:
            zf.writestr(name, data)
    return buffer.getvalue()


def zip_with_special(name: str, mode: int, data: bytes = b"", others: Members = ()) -> bytes:
    """A zip whose member `name` carries Unix `mode` (e.g. a symlink: stat.S_IFLNK | 0o777, data = its target)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for other, content in others:
            zf.writestr(other, content)
        info = zipfile.ZipInfo(name)
        info.create_system = 3
        info.external_attr = mode << 16
        zf.writestr(info, data)
    return buffer.getvalue()


def tar_info(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.type = kind
    info.linkname = linkname
    info.mode = 0o644
    info.mtime = int(time.time())
    return info


def tar_gz_bytes(members: Members, specials: Sequence[tarfile.TarInfo] = ()) -> bytes:
    """A tar.gz of regular files, plus `specials` (links, devices, fifos, directories: no data)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for info in specials:
            tf.addfile(info)
        for name, data in members:
            tf.addfile(tar_info(name, len(data)), io.BytesIO(data))
    return buffer.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data)


def manifest(rows: Iterable[Sequence[str]], header: Sequence[str] = ("path", "brand", "product", "label")) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return text.getvalue().encode()


def zip_member_sizes_lie(data: bytes, name: str, claimed: int) -> bytes:
    """Rewrite a zip so that `name` declares `claimed` uncompressed bytes in both its headers (a bomb that lies)."""
    out = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        info = zf.getinfo(name)
    local = info.header_offset
    out[local + 22 : local + 26] = claimed.to_bytes(4, "little")
    central = 0
    while True:  # the central directory entry of `name` (the name check skips look-alike bytes in file data)
        central = out.index(b"PK\x01\x02", central + 1)
        name_len = int.from_bytes(out[central + 28 : central + 30], "little")
        if bytes(out[central + 46 : central + 46 + name_len]) == name.encode():
            break
    out[central + 24 : central + 28] = claimed.to_bytes(4, "little")
    return bytes(out)


SYMLINK = stat.S_IFLNK | 0o777
CHAR_DEVICE = stat.S_IFCHR | 0o644
