"""Builds an open_clip vision tower from a ModelSpec: packaged weights, an open_clip tag, or a checkpoint."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import nn

from embeddings.authenticity import LabelledPhotos
from embeddings.errors import ModelLoadError
from embeddings.preprocess import PreprocessSpec
from embeddings.pretrained import find_packaged_weights, load_packaged_weights
from embeddings.registry import list_model_names
from embeddings.spec import ModelSpec

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "counterfeit-scan/checkpoint-v1"
FIX_HINT = (
    "Set COUNTERFEIT_SCAN_CHECKPOINT (--checkpoint) to a local weights file, or COUNTERFEIT_SCAN_MODEL_CACHE_DIR "
    "(--model-cache-dir) to a directory that already holds the open_clip weights, or use the offline default "
    "COUNTERFEIT_SCAN_MODEL=efficientnet-lite0 with COUNTERFEIT_SCAN_PRETRAINED=imagenet."
)


# Labelled photos a checkpoint carries for the authenticity head (`counterfeit-scan train`).
HeadPhotos = LabelledPhotos


@dataclass
class LoadedVisual:
    """A vision tower in eval mode with what is needed to feed it and to name its weights."""

    architecture: str
    visual: nn.Module
    preprocess: PreprocessSpec
    weights: str
    random_weights: bool
    match_threshold: float | None
    head_photos: HeadPhotos | None = None


def _preprocess_from(visual: nn.Module) -> PreprocessSpec:
    cfg: dict[str, Any] = dict(getattr(visual, "preprocess_cfg", {}))
    size = cfg.get("size", 224)
    return PreprocessSpec(
        size=int(size[0] if isinstance(size, (tuple, list)) else size),
        mean=tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD)),
        interpolation=str(cfg.get("interpolation", "bicubic")),
    )


def _require_known(name: str) -> None:
    if name not in list_model_names():
        raise ModelLoadError(
            f"unknown model architecture {name!r} (COUNTERFEIT_SCAN_MODEL / --model); "
            f"known: efficientnet-lite0, cs-tiny-vit, ViT-B-32 and the rest of open_clip.list_models()"
        )


def _create(name: str, **kwargs: Any) -> nn.Module:
    _require_known(name)
    # open_clip warns "initialized randomly" when we load the weights ourselves afterwards; that is noise here.
    quiet = logging.getLogger()
    level = quiet.level
    if "pretrained" not in kwargs:
        quiet.setLevel(logging.ERROR)
    try:
        model = open_clip.create_model(name, **kwargs)
    finally:
        quiet.setLevel(level)
    visual: nn.Module = model.visual
    return visual


def load_visual(spec: ModelSpec) -> LoadedVisual:
    """Load the vision tower described by `spec`, or raise ModelLoadError naming the setting to fix."""
    if spec.checkpoint is None:
        _require_known(spec.name)
    if spec.checkpoint is not None:
        return _load_checkpoint(spec, Path(spec.checkpoint))
    packaged = find_packaged_weights(spec.name, spec.pretrained)
    if packaged is not None:
        visual = _create(spec.name)
        try:
            load_packaged_weights(visual, packaged)
        except (ImportError, OSError, ValueError) as exc:
            raise ModelLoadError(
                f"could not load the packaged {spec.name}/{spec.pretrained} weights ({exc}); "
                f"install the Python package {packaged.package!r}. {FIX_HINT}"
            ) from exc
        pre = PreprocessSpec(_preprocess_from(visual).size, packaged.mean, packaged.std, packaged.interpolation)
        return LoadedVisual(spec.name, visual.eval(), pre, f"{spec.name}/{spec.pretrained}", False, packaged.match_threshold)
    if spec.pretrained:
        try:
            visual = _create(
                spec.name,
                pretrained=spec.pretrained,
                cache_dir=str(spec.cache_dir) if spec.cache_dir else None,
                require_pretrained=True,
            )
        except ModelLoadError:
            raise
        except Exception as exc:  # open_clip raises RuntimeError, OSError or hub errors when offline
            raise ModelLoadError(
                f"could not load pretrained weights {spec.pretrained!r} for {spec.name!r}: {exc}. {FIX_HINT}"
            ) from exc
        return LoadedVisual(spec.name, visual.eval(), _preprocess_from(visual), f"{spec.name}/{spec.pretrained}", False, None)
    if not spec.allow_random_weights:
        raise ModelLoadError(f"no weights configured for {spec.name!r} (COUNTERFEIT_SCAN_PRETRAINED is empty). {FIX_HINT}")
    torch.manual_seed(spec.seed)
    visual = _create(spec.name)
    log.warning("model %s has RANDOM weights (seed %d): similarities are meaningless", spec.name, spec.seed)
    return LoadedVisual(spec.name, visual.eval(), _preprocess_from(visual), f"{spec.name}/random-seed-{spec.seed}", True, None)


def _load_checkpoint(spec: ModelSpec, path: Path) -> LoadedVisual:
    if not path.is_file():
        raise ModelLoadError(f"checkpoint file {path} does not exist (COUNTERFEIT_SCAN_CHECKPOINT / --checkpoint)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(f"checkpoint {path} is not a readable torch file: {exc}") from exc
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        visual = _create(str(payload["architecture"]))
        try:
            visual.load_state_dict(payload["visual_state_dict"], strict=True)
        except RuntimeError as exc:
            raise ModelLoadError(f"checkpoint {path} does not fit {payload['architecture']}: {exc}") from exc
        pre: dict[str, Any] = payload.get("preprocess") or _preprocess_from(visual).as_dict()
        preprocess = PreprocessSpec(int(pre["size"]), tuple(pre["mean"]), tuple(pre["std"]), str(pre["interpolation"]))
        threshold = payload.get("match_threshold")
        architecture = str(payload["architecture"])
        head_photos = LabelledPhotos.from_payload(payload["head_photos"]) if payload.get("head_photos") else None
        return LoadedVisual(architecture, visual.eval(), preprocess, f"checkpoint:{path.name}", False, threshold, head_photos)
    try:
        visual = _create(spec.name, pretrained=str(path))
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"checkpoint {path} could not be loaded into {spec.name!r}: {exc}") from exc
    return LoadedVisual(spec.name, visual.eval(), _preprocess_from(visual), f"checkpoint:{path.name}", False, None)


def save_checkpoint(
    path: Path, architecture: str, loaded: LoadedVisual, metadata: dict[str, Any], head_photos: HeadPhotos | None = None
) -> None:
    """Write a checkpoint that `load_visual` reads back (used by training and tests), with the labelled photos the
    authenticity head learns from beside the catalog when given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "architecture": architecture,
            "visual_state_dict": loaded.visual.state_dict(),
            "preprocess": loaded.preprocess.as_dict(),
            "match_threshold": loaded.match_threshold,
            "metadata": metadata,
            "head_photos": head_photos.to_payload() if head_photos is not None else None,
        },
        tmp,
    )
    tmp.replace(path)
