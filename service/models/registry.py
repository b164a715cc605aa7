"""Which model the data directory serves: the active record, the history to roll back to, stored checkpoints.

`<data_dir>/models/active.json` is written atomically; a running service watches it, so a model activated from the
CLI (or rolled back) is switched to without a restart, and so is every replica of the service sharing the data
directory when one of them activates a model over HTTP. Changes to it are made under an exclusive lock on
`active.json.lock` (flock: local, and NFSv4, filesystems), so that two activations at once keep both in the history.
Checkpoints stored in the data directory are named relative to it, so replicas may mount it at different paths.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from embeddings import ModelSpec


@dataclass(frozen=True)
class ModelRecord:
    name: str
    pretrained: str | None
    checkpoint: str | None
    fingerprint: str
    weights: str
    activated_at: str

    def spec(self, base: ModelSpec) -> ModelSpec:
        """`base` (device, runtime, batch size…) with this record's model and weights."""
        return replace(
            base,
            name=self.name,
            pretrained=self.pretrained,
            checkpoint=Path(self.checkpoint) if self.checkpoint else None,
            allow_random_weights=base.allow_random_weights,
        )

    @classmethod
    def of(cls, spec: ModelSpec, fingerprint: str, weights: str) -> ModelRecord:
        return cls(
            name=spec.name,
            pretrained=spec.pretrained if spec.checkpoint is None else None,
            checkpoint=str(spec.checkpoint) if spec.checkpoint else None,
            fingerprint=fingerprint,
            weights=weights,
            activated_at=datetime.now(UTC).isoformat(),
        )


class NothingToRollBack(ValueError):
    pass


class ModelRegistry:
    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "models"
        self.path = self.root / "active.json"

    def _read(self) -> dict[str, Any]:
        if not self.path.is_file():
            return {"active": None, "history": []}
        data: dict[str, Any] = json.loads(self.path.read_text())
        return data

    def _write(self, data: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"active.json.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(data, indent=2))
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(self.path)

    @contextmanager
    def _changing(self) -> Iterator[dict[str, Any]]:
        """The registry's content, to change in place: written back on leaving, under the registry's lock."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "active.json.lock", "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                data = self._read()
                yield data
                self._write(data)
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _record(self, stored: dict[str, Any]) -> ModelRecord:
        """A stored record, its checkpoint path made absolute again (stored relative to the data directory)."""
        checkpoint = stored.get("checkpoint")
        if checkpoint and not Path(checkpoint).is_absolute():
            stored = {**stored, "checkpoint": str(self.root.parent.resolve() / checkpoint)}
        return ModelRecord(**stored)

    def _stored(self, record: ModelRecord) -> dict[str, Any]:
        """A record as stored: a checkpoint inside the data directory named relative to it."""
        stored = asdict(record)
        if record.checkpoint:
            path = Path(record.checkpoint)
            if path.is_absolute() and path.is_relative_to(self.root.parent.resolve()):
                stored["checkpoint"] = str(path.relative_to(self.root.parent.resolve()))
        return stored

    def active(self) -> ModelRecord | None:
        record = self._read()["active"]
        return self._record(record) if record else None

    def history(self) -> list[ModelRecord]:
        """Previously active models, most recent first (what `rollback` returns to)."""
        return [self._record(record) for record in self._read()["history"]]

    def record(self, new: ModelRecord, replacing: ModelRecord | None = None) -> None:
        """Make `new` the active model; the one it replaces goes to the front of the history.

        `replacing` names the model served until now when the registry has none yet (the settings' model), so that
        the first activation can be rolled back too.
        """
        with self._changing() as data:
            previous = data["active"] or (self._stored(replacing) if replacing else None)
            if previous and previous["fingerprint"] != new.fingerprint:
                data["history"].insert(0, previous)
            data["active"] = self._stored(new)

    def rollback(self) -> ModelRecord:
        """Return to the previously active model."""
        with self._changing() as data:
            if not data["history"]:
                raise NothingToRollBack("no previous model to roll back to")
            previous = data["history"].pop(0)
            data["active"] = {**previous, "activated_at": datetime.now(UTC).isoformat()}
        return self._record(data["active"])

    def store_checkpoint(self, path: Path) -> Path:
        """Copy a checkpoint into the data directory (content-addressed), so the record outlives the training run."""
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        target = self.root / "checkpoints" / f"{digest.hexdigest()[:16]}{path.suffix or '.pt'}"
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f"{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
            shutil.copyfile(path, tmp)
            tmp.replace(target)
        return target.resolve()
