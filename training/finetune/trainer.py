"""The fine-tuning run: epochs of class-balanced metric learning, validation by kNN vote, early stopping, resume."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from embeddings.spec import ModelSpec
from training.finetune.artifacts import finish_run, save_best
from training.finetune.config import FinetuneConfig
from training.finetune.layers import set_train_mode
from training.finetune.loader import ClassBalancedBatchSampler, epoch_seed, train_loader
from training.finetune.optim import deterministic
from training.finetune.outputs import LAST_FILE, write_curves, write_metrics_log
from training.finetune.setup import Prepared, prepare, spec_from_dict, spec_to_dict
from training.finetune.state import ResumeError, load_state, restore_rng_state, rng_state, save_state
from training.finetune.validation import FloatArray, embed_photos, evaluate_vote, monitored, summary

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneResult:
    """Where the run wrote its files, and its report (also in report.json)."""

    out_dir: Path
    best_checkpoint: Path
    report: dict[str, Any]


@dataclass
class Progress:
    """What changes from epoch to epoch and is saved in last.pt."""

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_value: float | None = None
    since_best: int = 0
    stopped_early: bool = False
    train_seconds: float = 0.0
    val_seconds: float = 0.0
    vectors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


def finetune(
    config: FinetuneConfig,
    base_spec: ModelSpec,
    manifests: Sequence[Path],
    split: str | None,
    out_dir: Path,
    *,
    resume: bool = False,
    stop_after_epoch: int | None = None,
) -> FinetuneResult:
    """Fine-tune `base_spec`'s vision tower on the manifests' photos and write best.pt, last.pt, metrics.jsonl,
    training_curves.png (with the optional plots extra) and report.json into `out_dir`.

    With `resume`, training continues from `out_dir/last.pt` (model, optimiser, schedule, epoch, RNG states); the
    manifests must be unchanged. `stop_after_epoch` ends the session after that epoch as an interruption would
    (last.pt written; resume later); the report is then marked unfinished.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    run = prepare(config, base_spec, manifests, split)
    progress = Progress()
    if resume:
        progress = _restore(run, load_state(out_dir / LAST_FILE))
    with deterministic(run.device):
        if not resume:
            _validate(run, progress, epoch=0, loss=None, seconds=0.0)
            _checkpoint(run, progress, out_dir)
        for epoch in range(progress.epoch + 1, config.epochs + 1):
            if progress.stopped_early or (stop_after_epoch is not None and epoch > stop_after_epoch):
                break
            started = time.perf_counter()
            loss = _train_epoch(run, epoch)
            seconds = time.perf_counter() - started
            progress.train_seconds += seconds
            progress.epoch = epoch
            if _validate(run, progress, epoch, loss, seconds):
                save_best(run, progress.history, progress.best_epoch, out_dir)
            _checkpoint(run, progress, out_dir)
            if progress.since_best >= config.patience:
                progress.stopped_early = True
                log.info("early stop after epoch %d: no better validation figure for %d epochs", epoch, config.patience)
                _checkpoint(run, progress, out_dir)
    finished = progress.stopped_early or progress.epoch >= config.epochs
    timing = _timing(progress)
    report = finish_run(
        run, progress.history, progress.best_epoch, progress.vectors, out_dir, timing, finished, progress.stopped_early
    )
    return FinetuneResult(out_dir, out_dir / "best.pt", report)


def resume_settings(out_dir: Path) -> tuple[FinetuneConfig, ModelSpec, list[Path], str | None]:
    """The config, base model, manifests and split a run in `out_dir` was started with (from its last.pt)."""
    state = load_state(out_dir / LAST_FILE)
    config = FinetuneConfig.from_dict(state["config"])
    manifests = [Path(m["path"]) for m in state["manifests"]]
    return config, spec_from_dict(state["base_spec"]), manifests, state["split"]


def _train_epoch(run: Prepared, epoch: int) -> float:
    config = run.config
    seed = epoch_seed(config.seed, epoch)
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    set_train_mode(run.visual, config.unfreeze, config.bn)
    sampler = ClassBalancedBatchSampler(
        run.train_labels,
        [image.family() for image in run.train],
        [image.group for image in run.train],
        config.batch_size,
        config.samples_per_class,
        config.seed,
        epoch,
        run.steps_per_epoch,
    )
    losses = []
    bar = tqdm(
        train_loader(run.train_dataset, sampler, config.num_workers, seed),
        total=len(sampler),
        desc=f"epoch {epoch}/{config.epochs}",
        leave=False,
        disable=None if config.show_progress is None else not config.show_progress,
    )
    for pixels, labels in bar:
        losses.append(run.stepper.step(pixels, labels))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    run.visual.eval()
    return float(np.mean(losses)) if losses else float("nan")


def _validate(run: Prepared, progress: Progress, epoch: int, loss: float | None, seconds: float) -> bool:
    """Validate, log the epoch and update the best epoch; True when this epoch is the new best."""
    config = run.config
    entry: dict[str, Any] = {
        "epoch": epoch,
        "train_loss": loss,
        "lr": run.stepper.optimizer.param_groups[0]["lr"] if epoch else None,
        "train_seconds": round(seconds, 2),
        "images_per_second": round(run.steps_per_epoch * config.batch_size / seconds, 2) if seconds else None,
        "val": None,
    }
    value: float | None = None
    if run.val:
        started = time.perf_counter()
        catalog, queries = _embed_validation(run, epoch)
        metrics = evaluate_vote(run.train, catalog, run.val, queries, k=config.knn_k, temperature=config.vote_temperature)
        progress.val_seconds += time.perf_counter() - started
        entry["val"] = summary(metrics)
        entry["monitor"], value = monitored(metrics, config.monitor)
        vectors = {"catalog": torch.from_numpy(catalog), "queries": torch.from_numpy(queries)}
        if epoch == 0:
            progress.vectors["before"] = vectors
    improved = False
    if epoch > 0:
        # Without validation every epoch is the newest best; otherwise only a strictly better figure counts.
        improved = not run.val or (value is not None and (progress.best_value is None or value > progress.best_value + 1e-9))
        if improved:
            progress.best_epoch, progress.best_value, progress.since_best = epoch, value, 0
            if run.val:
                progress.vectors["best"] = vectors
        else:
            progress.since_best += 1
    entry["best"] = improved
    progress.history.append(entry)
    shown = {k: entry["val"][k] for k in ("roc_auc", "tpr_at_fpr_1pct", "product_recall_at_1")} if entry["val"] else {}
    log.info("epoch %d: loss %s, validation %s", epoch, loss, shown)
    return improved


def _embed_validation(run: Prepared, epoch: int) -> tuple[FloatArray, FloatArray]:
    options: dict[str, Any] = {
        "batch_size": run.config.batch_size,
        "num_workers": run.config.num_workers,
        "amp_dtype": run.amp,
        "show_progress": run.config.show_progress,
    }
    catalog = embed_photos(run.visual, run.train, run.preprocess, run.device, description=f"validate {epoch}: catalog", **options)
    queries = embed_photos(run.visual, run.val, run.preprocess, run.device, description=f"validate {epoch}: queries", **options)
    return catalog, queries


def _timing(progress: Progress) -> dict[str, Any]:
    return {"train_seconds": round(progress.train_seconds, 1), "validation_seconds": round(progress.val_seconds, 1)}


def _checkpoint(run: Prepared, progress: Progress, out_dir: Path) -> None:
    """Write last.pt (everything needed to resume), metrics.jsonl and the curves."""
    stepper = run.stepper
    save_state(
        out_dir / LAST_FILE,
        {
            "config": run.config.as_dict(),
            "base_spec": spec_to_dict(run.base_spec),
            "base": run.base_info,
            "manifests": run.data.manifests,
            "split": run.split,
            "train_paths": [str(image.path) for image in run.train],
            "val_paths": [str(image.path) for image in run.val],
            "model": run.visual.state_dict(),
            "optimizer": stepper.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "scaler": stepper.scaler.state_dict(),
            "epoch": progress.epoch,
            "history": progress.history,
            "best_epoch": progress.best_epoch,
            "best_value": progress.best_value,
            "since_best": progress.since_best,
            "stopped_early": progress.stopped_early,
            "train_seconds": progress.train_seconds,
            "val_seconds": progress.val_seconds,
            "vectors": progress.vectors,
            "rng": rng_state(),
        },
    )
    write_metrics_log(out_dir, progress.history)
    write_curves(out_dir, progress.history, progress.best_epoch)


def _restore(run: Prepared, state: dict[str, Any]) -> Progress:
    """Load model, optimiser, schedule and progress from a resume state, after checking it is this run's."""
    saved = FinetuneConfig.from_dict(state["config"])
    changed = run.config.changed_on_resume(saved)
    if changed:
        raise ResumeError(f"cannot resume with different settings: {', '.join(changed)} (only epochs and patience may change)")
    now = [m["sha256"] for m in run.data.manifests]
    if now != [m["sha256"] for m in state["manifests"]]:
        raise ResumeError("the manifests changed since the run started; start a new run")
    if [str(image.path) for image in run.train] != state["train_paths"] or [str(i.path) for i in run.val] != state["val_paths"]:
        raise ResumeError("the train/validation split differs from the saved run's; start a new run")
    if run.base_info["fingerprint"] != state["base"]["fingerprint"]:
        raise ResumeError("the base model's weights differ from those the run started with")
    run.visual.load_state_dict(state["model"])
    run.stepper.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.stepper.scaler.load_state_dict(state["scaler"])
    restore_rng_state(state["rng"])
    log.info("resuming after epoch %d", state["epoch"])
    return Progress(
        epoch=int(state["epoch"]),
        history=list(state["history"]),
        best_epoch=state["best_epoch"],
        best_value=state["best_value"],
        since_best=int(state["since_best"]),
        stopped_early=bool(state["stopped_early"]),
        train_seconds=float(state["train_seconds"]),
        val_seconds=float(state["val_seconds"]),
        vectors=dict(state["vectors"]),
    )
