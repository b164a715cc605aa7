"""The trained checkpoint (loadable by `embeddings` like any other) with its metadata, and the run's report."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from embeddings.embedder import model_fingerprint
from embeddings.loading import LoadedVisual, load_visual, save_checkpoint
from embeddings.spec import ModelSpec
from training.finetune.data import describe
from training.finetune.outputs import BEST_FILE, write_report
from training.finetune.provenance import code_version, environment, peak_memory
from training.finetune.setup import Prepared
from training.finetune.validation import evaluate_vote, monitored, summary

log = logging.getLogger(__name__)
FINAL_BOOTSTRAP = 1000


def metadata(run: Prepared, history: list[dict[str, Any]], best_epoch: int | None, finished: bool) -> dict[str, Any]:
    """What a fine-tuned checkpoint says about itself: base model, data, hyper-parameters, metrics, code version."""
    best = next((entry for entry in history if entry["epoch"] == best_epoch), None)
    return {
        "kind": "fine-tuned vision tower",
        "base_model": run.base_info,
        "data": {
            "manifests": run.data.manifests,
            "class_key": run.config.class_key,
            "classes": run.class_names,
            "train": describe(run.train, run.config.class_key),
            "validation": describe(run.val, run.config.class_key),
        },
        "hyperparameters": {**run.config.as_dict(), "image_size": run.preprocess.size},
        "epochs": history,
        "best_epoch": best_epoch,
        "best_validation": best["val"] if best else None,
        "finished": finished,
        "code_version": code_version(),
        "created": datetime.now(UTC).isoformat(),
        "match_threshold_basis": (
            "5th percentile of the validation photos' best similarity to the training photos at the best epoch"
            if _threshold(best) is not None
            else "none (no validation set): the service's default applies"
        ),
    }


def _threshold(best: dict[str, Any] | None) -> float | None:
    percentiles = ((best or {}).get("val") or {}).get("top_similarity_percentiles") or {}
    value = percentiles.get("5")
    return None if value is None else round(float(value), 3)


def save_best(run: Prepared, history: list[dict[str, Any]], best_epoch: int | None, out_dir: Path) -> Path:
    """Write the current weights as best.pt (same architecture as the base, new weights)."""
    best = next((entry for entry in history if entry["epoch"] == best_epoch), None)
    loaded = LoadedVisual(
        run.base.architecture,
        run.visual,
        run.preprocess,
        f"finetuned:{run.base.weights}",
        run.base.random_weights,
        _threshold(best),
    )
    path = out_dir / BEST_FILE
    save_checkpoint(path, run.base.architecture, loaded, metadata(run, history, best_epoch, finished=False))
    return path


def finish_run(
    run: Prepared,
    history: list[dict[str, Any]],
    best_epoch: int | None,
    vectors: dict[str, dict[str, torch.Tensor]],
    out_dir: Path,
    timing: dict[str, Any],
    finished: bool,
    stopped_early: bool = False,
) -> dict[str, Any]:
    """Stamp best.pt with the whole history and write report.json: validation before (base) and after (best epoch)
    with bootstrap intervals, time, peak memory. Returns the report."""
    path = out_dir / BEST_FILE
    trained = [entry["epoch"] for entry in history if entry["epoch"] > 0]
    if best_epoch is None and trained:
        log.warning("no validation figure to choose by: best.pt holds the last epoch's weights")
        best_epoch = trained[-1]
        save_best(run, history, best_epoch, out_dir)
    fingerprint = None
    if path.is_file():
        loaded = load_visual(ModelSpec(checkpoint=path))
        save_checkpoint(path, loaded.architecture, loaded, metadata(run, history, best_epoch, finished))
        fingerprint = model_fingerprint(loaded.architecture, loaded.visual, loaded.preprocess)
    before = _final_figures(run, vectors.get("before"))
    after = _final_figures(run, vectors.get("best"))
    report: dict[str, Any] = {
        "finished": finished,
        "out_dir": str(out_dir),
        "best_checkpoint": str(path) if path.is_file() else None,
        "fingerprint": fingerprint,
        "base_model": run.base_info,
        "data": {
            "manifests": run.data.manifests,
            "train": describe(run.train, run.config.class_key),
            "validation": describe(run.val, run.config.class_key),
            "validation_groups": sorted({image.group for image in run.val}),
            "skipped_rows": run.data.skipped,
            "warnings": run.data.warnings,
        },
        "hyperparameters": {**run.config.as_dict(), "image_size": run.preprocess.size},
        "epochs_trained": len(trained),
        "stopped_early": stopped_early,
        "best_epoch": best_epoch,
        "validation_before": before,
        "validation_after": after,
        "improved_over_base": _improved(before, after, run.config.monitor),
        "time": {**timing, "images_per_second": _throughput(history)},
        "memory": peak_memory(run.device),
        "environment": environment(run.device),
        "code_version": code_version(),
        "created": datetime.now(UTC).isoformat(),
    }
    write_report(out_dir, report)
    return report


def _final_figures(run: Prepared, vectors: dict[str, torch.Tensor] | None) -> dict[str, Any] | None:
    if vectors is None or not run.val:
        return None
    metrics = evaluate_vote(
        run.train,
        vectors["catalog"].numpy(),
        run.val,
        vectors["queries"].numpy(),
        k=run.config.knn_k,
        temperature=run.config.vote_temperature,
        n_bootstrap=FINAL_BOOTSTRAP,
        seed=run.config.seed,
    )
    return summary(metrics)


def _improved(before: dict[str, Any] | None, after: dict[str, Any] | None, monitor: str) -> bool | None:
    if before is None or after is None:
        return None
    key = monitored(before, monitor)[0]
    if before.get(key) is None or after.get(key) is None:
        return None
    return bool(after[key] > before[key])


def _throughput(history: list[dict[str, Any]]) -> float | None:
    rates = [entry["images_per_second"] for entry in history if entry.get("images_per_second")]
    return round(sum(rates) / len(rates), 2) if rates else None
