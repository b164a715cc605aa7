"""Everything a run needs before its first step: data, split, base model, classes, transforms, optimiser."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from embeddings.embedder import model_fingerprint
from embeddings.loading import LoadedVisual, load_visual
from embeddings.preprocess import PreprocessSpec
from embeddings.runtimes import resolve_device
from embeddings.spec import ModelSpec
from training.finetune.augment import train_transform
from training.finetune.config import FinetuneConfig
from training.finetune.data import TrainImage, TrainingData, TrainingDataError, class_index, read_training_data, split_by_group
from training.finetune.layers import apply_unfreeze
from training.finetune.loader import PhotoDataset
from training.finetune.losses import LossFn, make_loss
from training.finetune.optim import Stepper, amp_dtype, make_optimizer, make_scheduler

log = logging.getLogger(__name__)


def spec_to_dict(spec: ModelSpec) -> dict[str, Any]:
    """The parts of a ModelSpec that say which weights were loaded (JSON-able)."""
    return {
        "name": spec.name,
        "pretrained": spec.pretrained,
        "checkpoint": str(spec.checkpoint) if spec.checkpoint else None,
        "cache_dir": str(spec.cache_dir) if spec.cache_dir else None,
        "allow_random_weights": spec.allow_random_weights,
        "seed": spec.seed,
    }


def spec_from_dict(values: dict[str, Any]) -> ModelSpec:
    """The inverse of `spec_to_dict`."""
    return ModelSpec(
        name=values["name"],
        pretrained=values["pretrained"],
        checkpoint=Path(values["checkpoint"]) if values.get("checkpoint") else None,
        cache_dir=Path(values["cache_dir"]) if values.get("cache_dir") else None,
        allow_random_weights=bool(values.get("allow_random_weights")),
        seed=int(values.get("seed", 0)),
    )


@dataclass
class Prepared:
    """A run's fixed parts: the model being trained, its data, and the optimisation machinery."""

    config: FinetuneConfig
    base_spec: ModelSpec
    base: LoadedVisual
    base_info: dict[str, Any]
    device: torch.device
    amp: torch.dtype | None
    preprocess: PreprocessSpec
    split: str | None
    data: TrainingData
    train: list[TrainImage]
    val: list[TrainImage]
    class_names: list[str]
    train_labels: list[int]
    train_dataset: PhotoDataset
    loss_fn: LossFn
    stepper: Stepper
    steps_per_epoch: int

    @property
    def visual(self) -> nn.Module:
        return self.base.visual

    @property
    def scheduler(self) -> LambdaLR:
        assert self.stepper.scheduler is not None
        return self.stepper.scheduler


def _frozen_copy(visual: nn.Module) -> nn.Module:
    copy = deepcopy(visual).eval()
    for parameter in copy.parameters():
        parameter.requires_grad_(False)
    return copy


def _input_size(visual: nn.Module, size: int, architecture: str) -> None:
    try:
        with torch.inference_mode():
            visual.eval()(torch.zeros(1, 3, size, size))
    except Exception as exc:
        raise ValueError(f"{architecture} cannot take {size}x{size} input ({exc}); use its own image size") from exc


def prepare(config: FinetuneConfig, base_spec: ModelSpec, manifests: Sequence[Path], split: str | None) -> Prepared:
    """Read and split the data, load the base model and set up what trains it; raises TrainingDataError,
    ModelLoadError or ValueError with a message that names the problem."""
    device = torch.device(resolve_device(config.device))
    data = read_training_data(manifests, split)
    for warning in data.warnings:
        log.warning(warning)
    if not data.images:
        first = f" (first problem: {data.skipped[0]})" if data.skipped else ""
        raise TrainingDataError("no usable labelled photos in the manifests" + (f" for split {split!r}" if split else "") + first)
    base = load_visual(base_spec)
    base_info = {
        "architecture": base.architecture,
        "weights": base.weights,
        "fingerprint": model_fingerprint(base.architecture, base.visual, base.preprocess),
        "random_weights": base.random_weights,
        "preprocess": base.preprocess.as_dict(),
        "spec": spec_to_dict(base_spec),
    }
    size = config.image_size or base.preprocess.size
    preprocess = PreprocessSpec(size, base.preprocess.mean, base.preprocess.std, base.preprocess.interpolation)
    _input_size(base.visual, size, base.architecture)
    train_rows, val_rows = split_by_group(data.images, config.val_fraction, config.seed, config.class_key)
    train = [data.images[i] for i in train_rows]
    val = [data.images[i] for i in val_rows]
    class_names, labels = class_index(train, config.class_key)
    if len(class_names) < 2:
        raise TrainingDataError(f"training needs photos of at least two classes; found {class_names or 'none'}")
    families = sorted({image.family() for image in train})
    family_of = {image.class_name(config.class_key): families.index(image.family()) for image in train}
    loss_fn = make_loss(config, [family_of[name] for name in class_names])
    visual = base.visual.to(device)
    anchor = _frozen_copy(visual) if config.anchor > 0 else None
    apply_unfreeze(visual, config.unfreeze)
    steps_per_epoch = max(1, -(-len(train) // config.batch_size))
    optimizer = make_optimizer(visual, config.lr, config.weight_decay)
    scheduler = make_scheduler(optimizer, steps_per_epoch * config.epochs, config.warmup_fraction)
    amp = amp_dtype(config.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    stepper = Stepper(visual, loss_fn, optimizer, scheduler, scaler, device, amp, config.max_grad_norm, anchor, config.anchor)
    # Random crops zoom in: decode JPEGs at about twice the input size so crops keep their detail.
    dataset = PhotoDataset([str(image.path) for image in train], labels, train_transform(preprocess), draft_size=2 * size)
    return Prepared(
        config=config,
        base_spec=base_spec,
        base=base,
        base_info=base_info,
        device=device,
        amp=amp,
        preprocess=preprocess,
        split=split,
        data=data,
        train=train,
        val=val,
        class_names=class_names,
        train_labels=labels,
        train_dataset=dataset,
        loss_fn=loss_fn,
        stepper=stepper,
        steps_per_epoch=steps_per_epoch,
    )
