"""What a run writes besides checkpoints: the metrics log (JSON lines), the training curves PNG and report.json.

The curves need matplotlib, the optional `plots` extra (`training.plotting`), imported only when they are drawn:
without it a run skips the PNG with a warning, and the metrics log and report carry the same figures.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from training.plotting import plots_available, plots_missing

log = logging.getLogger(__name__)

METRICS_FILE: Final = "metrics.jsonl"
CURVES_FILE: Final = "training_curves.png"
REPORT_FILE: Final = "report.json"
BEST_FILE: Final = "best.pt"
LAST_FILE: Final = "last.pt"
_CURVES: Final = {"roc_auc": "ROC-AUC", "tpr_at_fpr_1pct": "recall @ 1% FPR", "product_recall_at_1": "product recall@1"}


def write_metrics_log(out_dir: Path, history: Sequence[dict[str, Any]]) -> Path:
    """Rewrite metrics.jsonl with one line per epoch (epoch 0 is the base model, before training)."""
    path = out_dir / METRICS_FILE
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(entry, sort_keys=True) + "\n" for entry in history)
    tmp.replace(path)
    return path


def read_metrics_log(out_dir: Path) -> list[dict[str, Any]]:
    """The entries of metrics.jsonl."""
    with open(out_dir / METRICS_FILE, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def write_curves(out_dir: Path, history: Sequence[dict[str, Any]], best_epoch: int | None) -> Path | None:
    """Training loss and validation figures per epoch, the best epoch marked, as a PNG (matplotlib's Agg, no pyplot).

    None, with a warning, when matplotlib is not installed: the curves are a view of metrics.jsonl, not a result.
    """
    if not plots_available():
        log.warning("%s", plots_missing(f"training curves ({CURVES_FILE})"))
        return None
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(10, 4), dpi=100)
    loss_axes, metric_axes = figure.subplots(1, 2)
    trained = [entry for entry in history if entry.get("train_loss") is not None]
    loss_axes.plot([e["epoch"] for e in trained], [e["train_loss"] for e in trained], marker="o", color="#2166ac")
    loss_axes.set(title="training loss", xlabel="epoch", ylabel="mean loss per batch")
    loss_axes.grid(alpha=0.3)
    for key, label in _CURVES.items():
        points = [(e["epoch"], e["val"][key]) for e in history if (e.get("val") or {}).get(key) is not None]
        if points:
            metric_axes.plot(*zip(*points, strict=True), marker="o", label=label)
    if best_epoch is not None:
        for axes in (loss_axes, metric_axes):
            axes.axvline(best_epoch, color="#7f7f7f", linestyle="--", linewidth=1)
    metric_axes.set(title="validation (epoch 0 = base model)", xlabel="epoch", ylim=(0, 1.02))
    metric_axes.grid(alpha=0.3)
    if metric_axes.get_legend_handles_labels()[0]:
        metric_axes.legend(loc="lower right")
    else:
        metric_axes.text(0.5, 0.5, "no validation set", ha="center", va="center", transform=metric_axes.transAxes)
    for axes in (loss_axes, metric_axes):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.tight_layout()
    path = out_dir / CURVES_FILE
    figure.savefig(path)
    return path


def write_report(out_dir: Path, report: dict[str, Any]) -> Path:
    """Write report.json atomically."""
    path = out_dir / REPORT_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2, sort_keys=False), encoding="utf-8")
    tmp.replace(path)
    return path
