"""Optimiser, learning-rate schedule, mixed precision and the single optimisation step."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from training.finetune.losses import LossFn
from training.finetune.validation import autocast


def amp_dtype(requested: bool | None, device: torch.device) -> torch.dtype | None:
    """bfloat16 (or float16 on GPUs without it) when mixed precision applies; None for full precision.

    `requested` None means: on for CUDA, off on CPU (CPU autocast rarely speeds up these convolutions).
    """
    enabled = device.type == "cuda" if requested is None else requested
    if not enabled:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


def make_optimizer(visual: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the trainable weights; biases and norm scales (1-d tensors) get no weight decay."""
    decay = [p for p in visual.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in visual.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float) -> LambdaLR:
    """Linear warm-up over `warmup_fraction` of the steps, then cosine decay to zero."""
    warmup = max(1, round(warmup_fraction * total_steps)) if warmup_fraction > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return LambdaLR(optimizer, factor)


@dataclass
class Stepper:
    """One optimisation step: forward (mixed precision when set), loss in float32, backward, clip, step, schedule."""

    visual: nn.Module
    loss_fn: LossFn
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR | None
    scaler: torch.amp.GradScaler
    device: torch.device
    amp: torch.dtype | None = None
    max_grad_norm: float | None = None
    # A frozen copy of the base tower and the weight of the pull towards its embedding (0: no pull).
    anchor: nn.Module | None = None
    anchor_weight: float = 0.0

    def step(self, pixels: torch.Tensor, labels: torch.Tensor) -> float:
        """Train on one batch and return its loss."""
        pixels = pixels.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        with autocast(self.device, self.amp):
            embeddings = self.visual(pixels)
        loss = self.loss_fn(embeddings.float(), labels)
        if self.anchor is not None and self.anchor_weight > 0:
            with torch.no_grad(), autocast(self.device, self.amp):
                target = self.anchor(pixels)
            drift = 1.0 - F.cosine_similarity(embeddings.float(), target.float(), dim=1)
            loss = loss + self.anchor_weight * drift.mean()
        self.optimizer.zero_grad(set_to_none=True)
        scaled: torch.Tensor = self.scaler.scale(loss)
        torch.autograd.backward(scaled)
        if self.max_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            params: Sequence[torch.Tensor] = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        return float(loss.detach())


@contextlib.contextmanager
def deterministic(device: torch.device) -> Iterator[None]:
    """Deterministic kernels where torch has them (warn, not fail, where it has not); restored afterwards."""
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    previous_benchmark = torch.backends.cudnn.benchmark
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn_only)
        torch.backends.cudnn.benchmark = previous_benchmark
