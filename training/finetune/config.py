"""Hyper-parameters of a fine-tuning run, as one plain value that travels into checkpoints and reports."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Final, Literal

LossName = Literal["supcon", "triplet"]
ClassKey = Literal["product_label", "product"]
BatchNormMode = Literal["frozen", "train"]
Monitor = Literal["auto", "roc_auc", "tpr_at_fpr_1pct", "product_recall_at_1"]

LOSSES: Final = ("supcon", "triplet")
CLASS_KEYS: Final = ("product_label", "product")
BN_MODES: Final = ("frozen", "train")
MONITORS: Final = ("auto", "roc_auc", "tpr_at_fpr_1pct", "product_recall_at_1")
# Settings that may differ when a run is resumed (they do not change what was already trained).
RESUMABLE_CHANGES: Final = frozenset({"epochs", "patience", "num_workers", "device", "show_progress"})


def default_workers() -> int:
    """Data-loading worker processes: min(2, the CPU cores this process may use)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return min(2, max(1, cores))


@dataclass(frozen=True)
class FinetuneConfig:
    """What to train and how; every field is recorded in the checkpoint's metadata.

    `unfreeze` is the number of the vision tower's last blocks (stages) that are trained, together with everything
    after them (head convolution, final norm, projection); "all" trains every weight. `image_size` None keeps the
    base model's input size. `val_fraction` is the share of photo GROUPS held out for validation (0: none, no early
    stopping). `bn` "frozen" keeps every BatchNorm layer's running statistics as they are (eval mode) while its
    scale and shift train; "train" updates the statistics of the unfrozen layers from each batch. `anchor` > 0 adds
    anchor * mean(1 - cos(new embedding, base embedding)) to the loss: the embedding may move only as far as the
    labels ask, which keeps what the base model knew about everything else (e.g. that unrelated photos are far).
    """

    epochs: int = 5
    batch_size: int = 32
    samples_per_class: int = 4
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.1
    image_size: int | None = None
    unfreeze: int | Literal["all"] = 3
    bn: BatchNormMode = "frozen"
    loss: LossName = "supcon"
    temperature: float = 0.1
    margin: float = 0.2
    anchor: float = 1.0
    class_key: ClassKey = "product_label"
    seed: int = 0
    val_fraction: float = 0.2
    patience: int = 2
    monitor: Monitor = "auto"
    knn_k: int = 10
    vote_temperature: float = 0.05
    max_grad_norm: float | None = 5.0
    num_workers: int = dataclasses.field(default_factory=default_workers)
    device: str = "auto"
    amp: bool | None = None
    show_progress: bool | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.epochs < 1:
            problems.append("epochs must be at least 1")
        if self.samples_per_class < 2:
            problems.append("samples_per_class must be at least 2 (a class needs a positive pair)")
        if self.batch_size < 2 * self.samples_per_class:
            problems.append(f"batch_size must hold at least two classes ({2 * self.samples_per_class} photos)")
        if self.lr <= 0 or self.weight_decay < 0:
            problems.append("lr must be positive and weight_decay not negative")
        if not 0 <= self.warmup_fraction < 1:
            problems.append("warmup_fraction must be in [0, 1)")
        if self.image_size is not None and not 32 <= self.image_size <= 1024:
            problems.append("image_size must be between 32 and 1024 pixels")
        if self.unfreeze != "all" and (not isinstance(self.unfreeze, int) or self.unfreeze < 0):
            problems.append("unfreeze must be a number of blocks (0 or more) or 'all'")
        if not 0 <= self.val_fraction < 1:
            problems.append("val_fraction must be in [0, 1)")
        if self.patience < 1:
            problems.append("patience must be at least 1")
        if self.temperature <= 0 or self.vote_temperature <= 0 or self.margin < 0 or self.anchor < 0:
            problems.append("temperatures must be positive, the margin and the anchor weight not negative")
        if self.knn_k < 1 or self.num_workers < 0:
            problems.append("knn_k must be at least 1 and num_workers not negative")
        for name, value, allowed in (
            ("loss", self.loss, LOSSES),
            ("class_key", self.class_key, CLASS_KEYS),
            ("bn", self.bn, BN_MODES),
            ("monitor", self.monitor, MONITORS),
        ):
            if value not in allowed:
                problems.append(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
        if problems:
            raise ValueError("; ".join(problems))

    def as_dict(self) -> dict[str, Any]:
        """The fields as a JSON-able dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FinetuneConfig:
        """Rebuild a config from `as_dict` output (unknown keys are an error, missing ones take defaults)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown fine-tuning settings: {', '.join(unknown)}")
        return cls(**values)

    def changed_on_resume(self, saved: FinetuneConfig) -> list[str]:
        """Names of settings that differ from `saved` and may not change when a run resumes."""
        return [
            f.name
            for f in dataclasses.fields(self)
            if f.name not in RESUMABLE_CHANGES and getattr(self, f.name) != getattr(saved, f.name)
        ]
