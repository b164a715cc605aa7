"""Two scores of the same listings side by side: what the service answered against another signal (the kNN vote).

Both are resampled with the same group draws, so the interval of their difference is a paired one: narrower than the
two separate intervals suggest, and the honest test of whether one signal beats the other on these photos.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Final

import numpy as np

from training.evaluation.metrics import CI_LEVEL, MIN_VALID_FRACTION, _ranking, _table
from training.evaluation.records import EvalRecord

RANKING_FIGURES: Final = ("roc_auc", "pr_auc", "tpr_at_fpr_1pct", "tpr_at_fpr_5pct")


def compare_scores(
    records: Sequence[EvalRecord], alternatives: Mapping[str, Sequence[float]], n_bootstrap: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Ranking figures of each alternative score (one per record) with group-bootstrap intervals, and the paired
    difference `served - alternative` with its interval; `inside_noise` says whether that interval holds 0."""
    served = _table(records)
    tables = {name: _table([replace(r, score=float(s)) for r, s in zip(records, scores, strict=True)])
              for name, scores in alternatives.items()}  # fmt: skip
    n = len(records)
    ones = np.ones((1, n))
    n_groups = int(served.group.max()) + 1 if n else 0
    rng = np.random.default_rng(seed)
    drawn = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_bootstrap).astype(float) if n_groups else None
    weights = drawn[:, served.group] if drawn is not None else None
    served_point = _ranking(served, ones)
    served_samples = _ranking(served, weights) if weights is not None else None
    out: dict[str, Any] = {}
    for name, table in tables.items():
        point = _ranking(table, ones)
        samples = _ranking(table, weights) if weights is not None else None
        figures: dict[str, Any] = {}
        for figure in RANKING_FIGURES:
            value = _scalar(point[figure][0])
            difference = None if value is None else _scalar(served_point[figure][0] - point[figure][0])
            interval = _interval(samples[figure], n_bootstrap) if samples is not None else None
            gap = None
            if samples is not None and served_samples is not None:
                gap = _interval(served_samples[figure] - samples[figure], n_bootstrap)
            figures[figure] = {
                "value": value,
                "ci": interval,
                "served_minus_this": difference,
                "served_minus_this_ci": gap,
                "inside_noise": None if gap is None else bool(gap[0] <= 0.0 <= gap[1]),
            }
        out[name] = figures
    return {"signals": out, "bootstrap": {"n_resamples": n_bootstrap, "seed": seed, "level": CI_LEVEL, "n_units": n_groups}}


def _interval(values: np.ndarray, n_bootstrap: int) -> list[float] | None:
    kept = values[~np.isnan(values)]
    if kept.size < max(2, math.ceil(MIN_VALID_FRACTION * n_bootstrap)):
        return None
    tail = (1.0 - CI_LEVEL) / 2
    low, high = np.quantile(kept, [tail, 1.0 - tail])
    return [float(low), float(high)]


def _scalar(value: float) -> float | None:
    return None if math.isnan(value) else float(value)
