"""Content-addressed image files: `<root>/ab/cd/<sha256>`, written atomically before rows reference them."""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def put(self, sha256: str, data: bytes) -> Path:
        target = self.path(sha256)
        try:  # there already: touched, so that no orphan collector (of any process) takes it for an abandoned write
            os.utime(target)
            return target
        except FileNotFoundError:
            pass
        except OSError:  # there, and not ours to touch (another user's file)
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        # A name of its own: processes on other machines sharing the store may have the same pid and thread id
        tmp = target.with_name(f"{sha256}.{os.getpid()}.{threading.get_ident()}.{secrets.token_hex(4)}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(target)
        return target

    def get(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()

    def delete(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    def files(self) -> Iterator[Path]:
        """Every file under the store: blobs and leftover temp files of interrupted writes."""
        if self.root.is_dir():
            yield from (path for path in self.root.glob("??/??/*") if path.is_file())
