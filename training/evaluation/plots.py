"""Evaluation plots as PNG files: ROC curve, score histograms, reliability diagram, truth x verdict confusion.

Figures are built with matplotlib's object API (no pyplot), which renders with Agg and leaves the global backend
and figure registry alone, so plotting is safe in servers, threads and tests. matplotlib is the optional `plots`
extra (`training.plotting`): it is imported only when a figure is drawn, and without it `write_plots` draws nothing
and warns, so the report's figures and tables are still written.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from training.evaluation.metrics import FPR_BOUNDS, operating_point, reliability_bins, roc_points, verdict_counts
from training.evaluation.records import TRUTHS, VERDICTS, EvalRecord
from training.plotting import plots_available, plots_missing

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

PLOT_FILES: Final = {
    "roc": "roc.png",
    "score_histograms": "score_histograms.png",
    "reliability": "reliability.png",
    "confusion": "confusion.png",
}
_COLOURS: Final = {"authentic": "#1b7837", "counterfeit": "#c51b7d", "unrelated": "#7f7f7f"}
_SIZE: Final = (5.6, 4.4)
_DPI: Final = 100  # screen resolution: the four PNGs stay small enough to embed in the HTML report as data URIs


def write_plots(out_dir: Path, records: Sequence[EvalRecord], metrics: Mapping[str, Any]) -> list[Path]:
    """Write the four PNGs (names in PLOT_FILES) into `out_dir` and return their paths in that order.

    Without matplotlib (the optional `plots` extra) nothing is drawn: a warning says how to install it and the list is
    empty, so that an evaluation's numbers never depend on a plotting library.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if not plots_available():
        log.warning("%s", plots_missing("evaluation plots"))
        return []
    figures = {
        "roc": roc_figure(records, metrics),
        "score_histograms": score_histogram_figure(records),
        "reliability": reliability_figure(records, metrics),
        "confusion": confusion_figure(records),
    }
    paths = []
    for name, figure in figures.items():
        path = out_dir / PLOT_FILES[name]
        figure.savefig(path, format="png", dpi=_DPI)
        paths.append(path)
    return paths


def roc_figure(records: Sequence[EvalRecord], metrics: Mapping[str, Any]) -> Figure:
    """ROC curve of `score` (counterfeit = positive) with the best operating points at 1% and 5% FPR marked."""
    figure, axes = _figure()
    axes.plot([0, 1], [0, 1], linestyle=":", color="#999999", label="chance")
    curve = roc_points(records)
    if curve is None:
        _not_applicable(axes, "needs authentic and counterfeit rows")
    else:
        axes.step(curve.fpr, curve.tpr, where="post", color="#2166ac", label=f"score (AUC {_number(metrics.get('roc_auc'))})")
        for bound, marker in zip(FPR_BOUNDS.values(), ("o", "s"), strict=True):
            point = operating_point(curve, bound)
            label = f"FPR ≤ {bound:.0%}: recall {point.tpr:.2f} at score ≥ {point.threshold:.3g}"
            axes.plot(point.fpr, point.tpr, marker=marker, markersize=8, linestyle="none", label=label, zorder=3)
            axes.axvline(bound, color="#cccccc", linewidth=0.8, zorder=0)
    axes.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="false-positive rate (authentic flagged)")
    axes.set(ylabel="recall (counterfeit caught)", title="ROC curve: counterfeit vs authentic")
    axes.legend(loc="lower right", fontsize="small")
    return figure


def score_histogram_figure(records: Sequence[EvalRecord]) -> Figure:
    """Histograms of the raw score for each true label, each normalised to its own row count."""
    figure, axes = _figure()
    bins = np.linspace(0.0, 1.0, 21).tolist()
    for truth in TRUTHS:
        scores = np.array([r.score for r in records if r.truth == truth], dtype=float)
        if scores.size:
            # Shares rather than counts: the unrelated set is far smaller than the others.
            weights = np.full(scores.size, 1.0 / scores.size)
            axes.hist(scores, bins=bins, weights=weights, histtype="stepfilled", alpha=0.35, color=_COLOURS[truth])
            axes.hist(
                scores,
                bins=bins,
                weights=weights,
                histtype="step",
                linewidth=1.5,
                color=_COLOURS[truth],
                label=f"{truth} (n={scores.size})",
            )
    if not records:
        _not_applicable(axes, "no rows")
    axes.set(xlim=(0, 1), xlabel="raw score (higher = more likely fake)", ylabel="share of the label's rows")
    axes.set_title("Score by true label")
    if records:
        axes.legend(loc="best", fontsize="small")
    return figure


def reliability_figure(records: Sequence[EvalRecord], metrics: Mapping[str, Any]) -> Figure:
    """Reliability diagram of `risk`: observed counterfeit share per equal-width bin, the diagonal, and bin counts."""
    figure, axes = _figure()
    axes.plot([0, 1], [0, 1], linestyle=":", color="#999999", label="perfectly calibrated")
    bins = [b for b in reliability_bins(records) if b.n_rows]
    if not bins:
        _not_applicable(axes, "no authentic or counterfeit row has a risk")
    else:
        width = bins[0].high - bins[0].low
        axes.bar(
            [b.low for b in bins],
            [b.counterfeit_rate or 0.0 for b in bins],
            width=width,
            align="edge",
            color="#92c5de",
            edgecolor="#2166ac",
            label="observed counterfeit share",
        )
        axes.plot(
            np.array([b.mean_risk for b in bins], dtype=float),
            np.array([b.counterfeit_rate for b in bins], dtype=float),
            "o-",
            color="#b2182b",
            label="observed share at the bin's mean risk",
        )
        for b in bins:
            axes.annotate(
                f"n={b.n_rows}", (b.low + width / 2, min((b.counterfeit_rate or 0.0) + 0.02, 0.97)), ha="center", fontsize=7
            )
    kind = {True: "calibrated", False: "uncalibrated", None: "mixed or none"}[metrics.get("calibrated")]
    axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel=f"risk ({kind})", ylabel="observed counterfeit share")
    axes.set_title(f"Reliability (ECE {_number(metrics.get('ece'))})")
    axes.legend(loc="upper left", fontsize="small")
    return figure


def confusion_figure(records: Sequence[EvalRecord]) -> Figure:
    """Truth x verdict counts, shaded by each truth's share, at the thresholds the scorer used."""
    figure, axes = _figure(size=(6.4, 3.6))
    counts = verdict_counts(records)
    matrix = np.array([[counts[t][v] for v in VERDICTS] for t in TRUTHS], dtype=float)
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    for i, j in np.ndindex(matrix.shape):
        colour = "white" if shares[i, j] > 0.6 else "black"
        axes.text(j, i, f"{int(matrix[i, j])}\n{shares[i, j]:.0%}", ha="center", va="center", fontsize=9, color=colour)
    axes.set_xticks(range(len(VERDICTS)), [v.replace("_", " ") for v in VERDICTS], fontsize=8)
    axes.set_yticks(range(len(TRUTHS)), [f"{t} (n={int(n)})" for t, n in zip(TRUTHS, totals[:, 0], strict=True)], fontsize=8)
    axes.set(xlabel="verdict", ylabel="truth", title="Verdicts by truth")
    return figure


def _figure(size: tuple[float, float] = _SIZE) -> tuple[Figure, Axes]:
    from matplotlib.figure import Figure  # the optional plots extra: imported where a figure is drawn

    figure = Figure(figsize=size, layout="constrained")
    return figure, figure.add_subplot()


def _not_applicable(axes: Axes, why: str) -> None:
    axes.text(0.5, 0.5, f"not applicable: {why}", ha="center", va="center", transform=axes.transAxes, color="#555555")


def _number(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "n/a"
