"""Evaluation figures against hand-computed cases and against sklearn."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from tests.training.factory import match, record
from training.evaluation import EvalRecord, compute_metrics
from training.evaluation.metrics import SCALAR_FIGURES, _figures, _table, operating_point, reliability_bins, roc_points


def ranked(authentic: list[float], counterfeit: list[float]) -> list[EvalRecord]:
    return [record("authentic", s) for s in authentic] + [record("counterfeit", s) for s in counterfeit]


def synthetic(n: int, seed: int = 0) -> list[EvalRecord]:
    """Overlapping scores, rounded so that ties occur, with verdicts, products and a few unrelated rows."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        truth = "unrelated" if i % 20 == 0 else ("counterfeit" if i % 2 else "authentic")
        score = round(float(np.clip(rng.normal(0.6 if truth == "counterfeit" else 0.4, 0.15), 0, 1)), 2)
        verdict = "likely_counterfeit" if score > 0.7 else "likely_authentic" if score < 0.3 else "needs_review"
        if truth == "unrelated" and i % 40 == 0:
            verdict = "not_in_catalog"
        product = "air-force-1" if rng.random() < 0.8 else "dunk"
        rows.append(record(truth, score, verdict=verdict, matches=[match(product)]))
    return rows


def test_perfect_ranking() -> None:
    metrics = compute_metrics(ranked([0.1, 0.2, 0.3], [0.7, 0.8, 0.9]), n_bootstrap=50)
    assert metrics["roc_auc"] == 1.0
    assert metrics["pr_auc"] == 1.0
    assert metrics["tpr_at_fpr_1pct"] == 1.0
    assert metrics["tpr_at_fpr_5pct"] == 1.0
    assert (metrics["n_queries"], metrics["n_authentic"], metrics["n_counterfeit"], metrics["n_unrelated"]) == (6, 3, 3, 0)


def test_inverted_ranking() -> None:
    metrics = compute_metrics(ranked([0.7, 0.8, 0.9], [0.1, 0.2, 0.3]), n_bootstrap=0)
    assert metrics["roc_auc"] == 0.0
    assert metrics["tpr_at_fpr_1pct"] == 0.0
    # All three fakes rank below the three authentic rows: precision 1/4, 2/5, 3/6 as each is recalled.
    assert metrics["pr_auc"] == pytest.approx((1 / 4 + 2 / 5 + 3 / 6) / 3, abs=1e-6)


def test_auc_with_ties_by_hand() -> None:
    records = ranked([0.2, 0.5, 0.5], [0.5, 0.8])
    metrics = compute_metrics(records, n_bootstrap=0)
    # Pairs (fake, authentic): 0.8 beats all three (3); 0.5 beats 0.2 (1) and ties both 0.5s (2 x 1/2): 5 of 6.
    assert metrics["roc_auc"] == pytest.approx(5 / 6, abs=1e-6)
    # At score >= 0.8 half the fakes are caught with no authentic flagged; the next step costs FPR 2/3.
    assert metrics["tpr_at_fpr_1pct"] == 0.5
    assert metrics["tpr_at_fpr_5pct"] == 0.5
    # AP: recall 0.5 at precision 1, then recall 1 at precision 2/4.
    assert metrics["pr_auc"] == pytest.approx(0.5 * 1 + 0.5 * 0.5, abs=1e-6)


def test_ranking_figures_match_sklearn_with_ties() -> None:
    records = [r for r in synthetic(400, seed=3) if r.truth != "unrelated"]
    truth = [r.truth == "counterfeit" for r in records]
    scores = [r.score for r in records]
    metrics = compute_metrics(records, n_bootstrap=0)
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(truth, scores), abs=1e-6)
    assert metrics["pr_auc"] == pytest.approx(average_precision_score(truth, scores), abs=1e-6)
    curve = roc_points(records)
    assert curve is not None
    assert metrics["tpr_at_fpr_5pct"] == pytest.approx(operating_point(curve, 0.05).tpr, abs=1e-6)
    assert operating_point(curve, 0.05).fpr <= 0.05


def test_ece_by_hand() -> None:
    records = [
        record("authentic", 0.05),  # bin 0: gap -0.05
        record("counterfeit", 0.15),  # bin 1: gaps +0.85 and -0.15 -> |0.70|
        record("authentic", 0.15),
        record("authentic", 0.85),  # bin 8: gap -0.85
        record("counterfeit", 0.95),  # bin 9: gaps +0.05, +0.08 and 0 (a risk of exactly 1 is in the last bin)
        record("counterfeit", 0.92),
        record("counterfeit", 1.0),
        record("unrelated", 0.9),  # not part of the calibration figure
        record("counterfeit", 0.5, verdict="not_in_catalog"),  # no risk
    ]
    metrics = compute_metrics(records, n_bootstrap=0)
    assert metrics["ece"] == pytest.approx((0.05 + 0.70 + 0.85 + 0.13) / 7, abs=1e-6)
    bins = reliability_bins(records)
    assert [b.n_rows for b in bins] == [1, 2, 0, 0, 0, 0, 0, 0, 1, 3]
    assert bins[1].counterfeit_rate == 0.5 and bins[1].mean_risk == pytest.approx(0.15)


def test_product_recall_at_1_and_5() -> None:
    others = [match(f"other-{i}") for i in range(5)]
    records = [
        record("authentic", 0.1, matches=[match("air-force-1"), *others]),  # top match: hit at 1 and 5
        record("counterfeit", 0.9, matches=[*others[:2], match("air-force-1"), *others[2:]]),  # third: hit at 5 only
        record("counterfeit", 0.8, matches=[*others, match("air-force-1")]),  # sixth: neither
        record("authentic", 0.2, matches=[match("air-force-1", brand="Adidas")]),  # same name, other brand: neither
        record("authentic", 0.3, verdict="not_in_catalog"),  # no matches: neither
        record("unrelated", 0.5, matches=[match("air-force-1")]),  # no true product: not counted
    ]
    metrics = compute_metrics(records, n_bootstrap=0)
    assert metrics["product_recall_at_1"] == pytest.approx(1 / 5)
    assert metrics["product_recall_at_5"] == pytest.approx(2 / 5)


def test_verdict_figures_and_unrelated_rate() -> None:
    records = [
        record("authentic", 0.9, verdict="likely_counterfeit"),
        record("counterfeit", 0.95, verdict="likely_counterfeit"),
        record("counterfeit", 0.97, verdict="likely_counterfeit"),
        record("counterfeit", 0.5, verdict="needs_review"),
        record("authentic", 0.1, verdict="likely_authentic"),
        record("counterfeit", 0.2, verdict="likely_authentic"),
        record("unrelated", 0.4, verdict="not_in_catalog"),
        record("unrelated", 0.4, verdict="not_in_catalog"),
        record("unrelated", 0.4, verdict="not_in_catalog"),
        record("unrelated", 0.6, verdict="needs_review"),
    ]
    metrics = compute_metrics(records, n_bootstrap=0)
    assert metrics["likely_counterfeit_precision"] == pytest.approx(2 / 3)
    assert metrics["likely_counterfeit_recall"] == pytest.approx(2 / 4)
    assert metrics["likely_counterfeit_fpr"] == pytest.approx(1 / 2)
    assert metrics["likely_authentic_miss_rate"] == pytest.approx(1 / 4)
    assert metrics["needs_review_rate"] == pytest.approx(1 / 6)
    assert metrics["catalog_not_in_catalog_rate"] == 0.0
    assert metrics["unrelated_not_in_catalog_rate"] == pytest.approx(3 / 4)
    assert metrics["verdicts"]["unrelated"] == {
        "likely_counterfeit": 0,
        "needs_review": 1,
        "likely_authentic": 0,
        "not_in_catalog": 3,
    }
    assert metrics["verdicts"]["authentic"]["likely_counterfeit"] == 1


def test_figures_are_null_where_they_do_not_apply() -> None:
    metrics = compute_metrics([record("authentic", 0.2), record("authentic", 0.4)], n_bootstrap=100)
    for name in (
        "roc_auc",
        "pr_auc",
        "tpr_at_fpr_1pct",
        "tpr_at_fpr_5pct",
        "likely_counterfeit_precision",
        "unrelated_not_in_catalog_rate",
    ):
        assert metrics[name] is None, name
        assert metrics["ci"][name] is None, name
    assert metrics["needs_review_rate"] == 1.0
    assert metrics["ece"] is not None
    json.dumps(metrics, allow_nan=False)  # nulls, never NaN

    empty = compute_metrics([], n_bootstrap=10)
    assert empty["n_queries"] == 0
    assert all(empty[name] is None for name in SCALAR_FIGURES)
    assert roc_points([]) is None


def test_ece_is_null_without_risks() -> None:
    records = [record("authentic", 0.2, verdict="not_in_catalog"), record("counterfeit", 0.7, verdict="not_in_catalog")]
    metrics = compute_metrics(records, n_bootstrap=0)
    assert metrics["ece"] is None
    assert metrics["catalog_not_in_catalog_rate"] == 1.0


def test_intervals_bracket_the_estimates_and_are_seeded() -> None:
    records = synthetic(300)
    metrics = compute_metrics(records, n_bootstrap=300, seed=7)
    for name in SCALAR_FIGURES:
        value, interval = metrics[name], metrics["ci"][name]
        assert value is not None and interval is not None, name
        assert interval[0] <= value <= interval[1], name
    assert metrics["ci"]["roc_auc"][1] - metrics["ci"]["roc_auc"][0] > 0.01
    assert compute_metrics(records, n_bootstrap=300, seed=7)["ci"] == metrics["ci"]
    assert compute_metrics(records, n_bootstrap=0)["ci"]["roc_auc"] is None
    json.dumps(metrics, allow_nan=False)


def test_resample_weights_equal_resampled_rows() -> None:
    """A bootstrap resample (weights = draw counts) gives the figures of the explicitly resampled record list."""
    records = synthetic(120, seed=5)
    counts = np.random.default_rng(1).multinomial(len(records), np.full(len(records), 1 / len(records)))
    by_weights = _figures(_table(records), counts[None, :].astype(float))
    resampled = [r for r, c in zip(records, counts, strict=True) for _ in range(c)]
    direct = compute_metrics(resampled, n_bootstrap=0)
    for name in SCALAR_FIGURES:
        assert by_weights[name][0] == pytest.approx(direct[name], abs=1e-6), name


def test_group_bootstrap_resamples_whole_groups() -> None:
    records = [record(r.truth, r.score, verdict=r.verdict, group=f"g{i // 5}") for i, r in enumerate(synthetic(200))]
    metrics = compute_metrics(records, n_bootstrap=200)
    assert metrics["bootstrap"]["unit"] == "group"
    assert metrics["bootstrap"]["n_units"] == 40
    assert compute_metrics(synthetic(200), n_bootstrap=10)["bootstrap"]["unit"] == "listing"


def test_bootstrap_is_fast() -> None:
    records = synthetic(600)
    start = time.perf_counter()
    compute_metrics(records, n_bootstrap=1000)
    assert time.perf_counter() - start < 5.0


def test_record_rejects_unknown_labels() -> None:
    with pytest.raises(ValueError, match="truth must be one of"):
        record("fake", 0.5)
    with pytest.raises(ValueError, match="verdict must be one of"):
        record("authentic", 0.5, verdict="maybe")
