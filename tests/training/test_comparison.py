"""Served score against another signal on the same listings: paired group-bootstrap differences."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tests.training.factory import record
from training.evaluation import EvalRecord
from training.evaluation.comparison import compare_scores


def listings(n_groups: int, per_group: int, seed: int = 0) -> tuple[list[EvalRecord], np.ndarray, np.ndarray]:
    """Records whose served score separates the labels well, and a weak alternative score of the same rows."""
    rng = np.random.default_rng(seed)
    records: list[EvalRecord] = []
    served, weak = [], []
    for g in range(n_groups):
        truth = "counterfeit" if g % 2 else "authentic"
        for _ in range(per_group):
            strong = float(np.clip(rng.normal(0.7 if g % 2 else 0.3, 0.1), 0, 1))
            records.append(record(truth, strong, group=f"shoot-{g}"))
            served.append(strong)
            weak.append(float(np.clip(rng.normal(0.55 if g % 2 else 0.45, 0.2), 0, 1)))
    return records, np.array(served), np.array(weak)


def test_a_clearly_better_served_score_is_outside_the_noise() -> None:
    records, served, weak = listings(n_groups=60, per_group=3)
    truth = [r.truth == "counterfeit" for r in records]
    out = compare_scores(records, {"weak": weak.tolist()}, n_bootstrap=200, seed=1)
    figure = out["signals"]["weak"]["roc_auc"]
    assert figure["value"] == pytest.approx(roc_auc_score(truth, weak))
    assert figure["served_minus_this"] == pytest.approx(roc_auc_score(truth, served) - roc_auc_score(truth, weak))
    low, high = figure["served_minus_this_ci"]
    assert 0.0 < low <= figure["served_minus_this"] <= high and figure["inside_noise"] is False
    assert out["bootstrap"]["n_units"] == 60  # whole shoots are resampled, not photos


def test_a_few_shoots_leave_a_small_difference_inside_the_noise() -> None:
    records, served, _ = listings(n_groups=8, per_group=3, seed=2)
    nudged = (served + np.random.default_rng(3).normal(0, 0.05, len(served))).tolist()
    figure = compare_scores(records, {"nudged": nudged}, n_bootstrap=200)["signals"]["nudged"]["roc_auc"]
    assert figure["inside_noise"] is True


def test_no_resamples_give_point_figures_only() -> None:
    records, _, weak = listings(n_groups=6, per_group=2)
    figure = compare_scores(records, {"weak": weak.tolist()}, n_bootstrap=0)["signals"]["weak"]["roc_auc"]
    assert figure["ci"] is None and figure["served_minus_this_ci"] is None and figure["inside_noise"] is None
