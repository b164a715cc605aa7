"""Registers this project's model configs with open_clip's own config registry."""

from __future__ import annotations

from pathlib import Path

import open_clip

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
_registered = False


def register_model_configs() -> None:
    """Make `efficientnet-lite0`, `cs-tiny-vit` and friends known to `open_clip.create_model`."""
    global _registered
    if not _registered:
        open_clip.add_model_config(MODEL_CONFIG_DIR)
        _registered = True


def list_model_names() -> list[str]:
    """All architectures open_clip can build, ours included."""
    register_model_configs()
    return list(open_clip.list_models())
