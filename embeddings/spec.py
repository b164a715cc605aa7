"""What model to load and how to run it: a plain value the service and CLI settings map onto."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Runtime = Literal["auto", "torch", "onnx"]


@dataclass(frozen=True)
class ModelSpec:
    """Model choice: an open_clip architecture with a pretrained tag, or a local checkpoint file."""

    name: str = "efficientnet-lite0"
    pretrained: str | None = "imagenet"
    checkpoint: Path | None = None
    cache_dir: Path | None = None
    device: str = "auto"
    runtime: Runtime = "auto"
    batch_size: int = 32
    threads: int = 0
    compile: bool = False  # torch runtime only: torch.compile the tower (GPU serving)
    # Random weights are for tests only; responses then say the scores are meaningless.
    allow_random_weights: bool = False
    seed: int = 0
