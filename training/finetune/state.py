"""The resume state (`last.pt`) and random-number-generator states, stored with plain types (weights_only loads)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch

STATE_FORMAT: Final = "counterfeit-scan/train-state-v1"


class ResumeError(ValueError):
    """A resume state that is missing, unreadable or does not belong to this run."""


def rng_state() -> dict[str, Any]:
    """The states of python's, numpy's and torch's global generators (CUDA's too when present)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": _listify(random.getstate()),
        "numpy": {
            "kind": str(kind),
            "keys": [int(v) for v in keys],
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back what `rng_state` captured."""
    random.setstate(_tuplify(state["python"]))
    np_state = state["numpy"]
    keys = np.asarray(np_state["keys"], dtype=np.uint32)
    np.random.set_state((np_state["kind"], keys, np_state["pos"], np_state["has_gauss"], np_state["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _listify(value: Any) -> Any:
    return [_listify(v) for v in value] if isinstance(value, (tuple, list)) else value


def _tuplify(value: Any) -> Any:
    return tuple(_tuplify(v) for v in value) if isinstance(value, list) else value


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write the resume state atomically (a crash mid-write leaves the previous one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"format": STATE_FORMAT, **state}, tmp)
    tmp.replace(path)


def load_state(path: Path) -> dict[str, Any]:
    """Read a resume state written by `save_state`; `path` may be the file or the run directory."""
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise ResumeError(f"no resume state at {path}")
    try:
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ResumeError(f"{path} is not a readable resume state: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ResumeError(f"{path} is not a counterfeit-scan training state ({STATE_FORMAT})")
    return state
