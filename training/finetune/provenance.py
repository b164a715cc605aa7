"""Where a trained model came from: code version, machine, memory use."""

from __future__ import annotations

import platform
import resource
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

_REPO = Path(__file__).resolve().parents[2]


def code_version() -> dict[str, Any]:
    """The package version and, when the code runs from a git checkout, its commit and whether it had local changes."""
    try:
        version: str | None = metadata.version("counterfeit-scan")
    except metadata.PackageNotFoundError:
        version = None
    info: dict[str, Any] = {"package": "counterfeit-scan", "version": version, "git_commit": None, "git_dirty": None}
    try:
        commit = subprocess.run(
            ["git", "-C", str(_REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(_REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        info.update(git_commit=commit or None, git_dirty=bool(dirty))
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def environment(device: torch.device) -> dict[str, Any]:
    """Python, torch and device, for the report."""
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def peak_memory(device: torch.device) -> dict[str, Any]:
    """Peak resident memory of this process, and peak GPU memory on a GPU.

    Data-loading workers are left out: they are forks whose peak RSS counts the pages they share with this process.
    """
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    out: dict[str, Any] = {"max_rss_mib": round(own * scale / 2**20, 1)}
    if device.type == "cuda":
        out["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out
