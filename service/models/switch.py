"""Switches the running service to another model in the background: prepare beside the serving one, then swap.

Scans in flight finish on the model they started with; no request waits for the switch. The switcher also follows
`<data_dir>/models/active.json`, so `counterfeit-scan model activate|rollback` reach a running service.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from embeddings import ModelLoadError, ModelSpec
from service.core import ServiceCore
from service.models.registry import ModelRecord

log = logging.getLogger(__name__)


class SwitchBusy(RuntimeError):
    """Another model switch is still running."""


@dataclass
class SwitchState:
    state: str = "idle"  # idle | preparing | done | failed
    target: dict[str, Any] | None = None
    error: str | None = None
    started_at: str | None = None
    finished_at: str | None = None


class ModelSwitcher:
    def __init__(self) -> None:
        self.status = SwitchState()
        self._lock = threading.Lock()
        self._followed: ModelRecord | None = None

    def snapshot(self) -> dict[str, Any]:
        return asdict(self.status)

    def switch(self, core: ServiceCore, spec: ModelSpec, record: bool = True, wait: bool = False) -> dict[str, Any]:
        """Start switching `core`'s model to `spec`; with `record`, the registry then names it the active model."""
        with self._lock:
            if self.status.state == "preparing":
                raise SwitchBusy(f"a switch to {self.status.target} is running; wait for it")
            target = {"model": spec.name, "pretrained": spec.pretrained, "checkpoint": str(spec.checkpoint or "") or None}
            self.status = SwitchState("preparing", target, None, datetime.now(UTC).isoformat(), None)
        thread = threading.Thread(target=self._run, args=(core, spec, record), name="model-switch", daemon=True)
        thread.start()
        if wait:
            thread.join()
        return self.snapshot()

    def _run(self, core: ServiceCore, spec: ModelSpec, record: bool) -> None:
        try:
            served = core.model.embedder
            model = core.models.prepare(spec)
            core.models.activate(model)
            info = model.embedder.info
            if record:
                replacing = ModelRecord.of(served.spec, served.info.fingerprint, served.info.weights)
                core.registry.record(ModelRecord.of(spec, info.fingerprint, info.weights), replacing)
            self._followed = core.registry.active()
            self.status.target = {
                **(self.status.target or {}),
                "fingerprint": info.fingerprint,
                "index_version": model.index.version,
            }
            self.status.state = "done"
        except (ModelLoadError, OSError, ValueError, RuntimeError) as exc:
            log.exception("model switch failed; still serving %s", core.model.embedder.info.short_id)
            self.status.error = f"{type(exc).__name__}: {exc}"
            self.status.state = "failed"
        finally:
            self.status.finished_at = datetime.now(UTC).isoformat()

    def follow_registry(self, core: ServiceCore) -> None:
        """Switch when the registry names another model than the one served (activated or rolled back elsewhere)."""
        active = core.registry.active()
        if active is None or active == self._followed or self.status.state == "preparing":
            return
        self._followed = active  # try each record once; a failure is reported in the status, not retried in a loop
        served = core.model.embedder.info
        # The weights' name too: a `train --backbone frozen` checkpoint has the base model's fingerprint, and what it
        # changes is the labelled photos its authenticity heads learn from.
        if active.fingerprint != served.fingerprint or active.weights != served.weights:
            log.info("registry names %s: switching", active.weights)
            self.switch(core, active.spec(core.settings.model_spec()), record=False)
