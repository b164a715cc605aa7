"""The calibrator: fitted probabilities, thresholds from targets, the JSON contract, and its refusals."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from training.calibration import (
    FORMAT,
    NEVER_CLEAR,
    NEVER_FLAG,
    apply_calibrator,
    choose_thresholds,
    fit_calibrator,
)

NAMES = ["score", "margin", "noise"]


def synthetic(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Separable-ish rows: fakes score higher and have a positive margin, plus one feature of pure noise."""
    rng = np.random.default_rng(seed)
    fake = np.arange(n) % 2
    score = np.clip(0.35 + 0.3 * fake + rng.normal(0, 0.15, n), 0, 1)
    margin = 0.1 * (2 * fake - 1) + rng.normal(0, 0.1, n)
    return np.column_stack([score, margin, rng.normal(0, 1, n)]), fake


@pytest.fixture(scope="module")
def fitted() -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    x, y = synthetic()
    return fit_calibrator(x, NAMES, y), x, y


def with_method(spec: dict[str, Any], method: str) -> dict[str, Any]:
    return {**spec, "method": method}


def test_spec_follows_the_contract(fitted: tuple[dict[str, Any], np.ndarray, np.ndarray]) -> None:
    spec, _, y = fitted
    assert spec["format"] == FORMAT
    assert spec["method"] in ("platt", "isotonic")
    assert spec["features"] == NAMES
    assert set(spec["platt"]) == {"mean", "scale", "coef", "intercept"}
    assert all(len(spec["platt"][key]) == len(NAMES) for key in ("mean", "scale", "coef"))
    assert spec["isotonic"]["feature"] == "score"
    assert np.all(np.diff(spec["isotonic"]["x"]) > 0)
    assert set(spec["thresholds"]) == {"likely_counterfeit", "likely_authentic"}
    fit = spec["fit"]
    assert (fit["n"], fit["n_counterfeit"], fit["seed"]) == (len(y), int(y.sum()), 0)
    assert set(fit["cv_log_loss"]) == set(fit["cv_brier"]) == {"platt", "isotonic"}
    # The chosen method is the one with the lower held-out log-loss.
    assert spec["method"] == min(fit["cv_log_loss"], key=lambda m: (fit["cv_log_loss"][m], m != "platt"))


def test_probabilities_rise_with_the_score(fitted: tuple[dict[str, Any], np.ndarray, np.ndarray]) -> None:
    spec, x, _ = fitted
    grid = np.tile(x.mean(axis=0), (101, 1))
    grid[:, 0] = np.linspace(-0.2, 1.2, 101)  # beyond the fitted range too: isotonic clips, Platt keeps rising
    for method in ("platt", "isotonic"):
        p = apply_calibrator(with_method(spec, method), grid, NAMES)
        assert np.all((p >= 0) & (p <= 1)), method
        assert np.all(np.diff(p) >= 0), method
        assert p[-1] - p[0] > 0.5, method  # and they do separate the classes


def test_thresholds_meet_the_targets_out_of_fold(fitted: tuple[dict[str, Any], np.ndarray, np.ndarray]) -> None:
    spec, _, _ = fitted
    fit, thresholds = spec["fit"], spec["thresholds"]
    assert fit["oof_fpr_at_threshold"] <= fit["target_fpr"]
    assert fit["oof_miss_rate_at_threshold"] <= fit["target_miss_rate"]
    assert fit["oof_tpr_at_threshold"] > 0
    assert 0 <= thresholds["likely_authentic"] < thresholds["likely_counterfeit"] <= 1


def test_thresholds_by_hand() -> None:
    authentic = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    fake = [0.5, 0.85, 0.9, 0.97, 0.99]
    p, y = authentic + fake, [0] * 10 + [1] * 5
    # FPR 10% allows one authentic row flagged: the smallest threshold above 0.9 is 0.95. A 20% miss rate allows one
    # fake cleared: the largest threshold below the second-lowest fake (0.85) is 0.8.
    assert choose_thresholds(p, y, 0.1, 0.2) == {"likely_counterfeit": 0.95, "likely_authentic": 0.8}
    # No authentic row may be flagged: above 0.95.
    assert choose_thresholds(p, y, 0.0, 0.2)["likely_counterfeit"] == 0.97
    # No fake may be cleared: below 0.5.
    assert choose_thresholds(p, y, 0.0, 0.0)["likely_authentic"] == 0.4


def test_thresholds_that_cross_meet_in_the_middle() -> None:
    p, y = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0], [0] * 5 + [1] * 5
    # Flag from 0.6 (no authentic above 0.5); clear up to 0.7 (two of five fakes at most): they cross.
    thresholds = choose_thresholds(p, y, 0.0, 0.4)
    assert thresholds["likely_counterfeit"] == pytest.approx(0.65)
    assert thresholds["likely_authentic"] == np.nextafter(thresholds["likely_counterfeit"], 0)


def test_thresholds_that_cannot_be_met_never_fire() -> None:
    # An authentic row ties the top fake at 1.0 and a fake is the lowest row: no threshold meets zero targets.
    p, y = [0.3, 0.5, 1.0, 0.1, 0.8, 1.0], [0, 0, 0, 1, 1, 1]
    assert choose_thresholds(p, y, 0.0, 0.0) == {"likely_counterfeit": NEVER_FLAG, "likely_authentic": NEVER_CLEAR}
    assert NEVER_FLAG > 1.0 and NEVER_CLEAR < 0.0


def test_json_round_trip_and_sklearn_agree(fitted: tuple[dict[str, Any], np.ndarray, np.ndarray]) -> None:
    spec, x, y = fitted
    loaded = json.loads(json.dumps(spec, allow_nan=False))
    platt = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000)).fit(x, y)
    isotonic = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(x[:, 0], y)
    expected = {"platt": platt.predict_proba(x)[:, 1], "isotonic": isotonic.predict(x[:, 0])}
    for method, want in expected.items():
        before = apply_calibrator(with_method(spec, method), x, NAMES)
        after = apply_calibrator(with_method(loaded, method), x, NAMES)
        np.testing.assert_array_equal(before, after)
        np.testing.assert_allclose(after, want, atol=1e-9)


def test_columns_are_matched_by_name(fitted: tuple[dict[str, Any], np.ndarray, np.ndarray]) -> None:
    spec, x, _ = fitted
    shuffled = np.column_stack([x[:, 2], np.zeros(len(x)), x[:, 0], x[:, 1]])
    names = ["noise", "extra", "score", "margin"]
    np.testing.assert_allclose(apply_calibrator(spec, shuffled, names), apply_calibrator(spec, x, NAMES))
    with pytest.raises(ValueError, match="missing here: margin"):
        apply_calibrator(with_method(spec, "platt"), x[:, [0, 2]], ["score", "noise"])
    with pytest.raises(ValueError, match="not a calibrator"):
        apply_calibrator({**spec, "format": "other"}, x, NAMES)


def test_seed_makes_the_fit_repeatable() -> None:
    x, y = synthetic(120, seed=4)
    assert fit_calibrator(x, NAMES, y, seed=3) == fit_calibrator(x, NAMES, y, seed=3)


@pytest.mark.parametrize(
    ("n", "n_fake", "message"),
    [(19, 9, "at least 20 rows"), (40, 4, "4 counterfeit"), (40, 36, "4 authentic")],
)
def test_too_little_data_is_refused(n: int, n_fake: int, message: str) -> None:
    x, _ = synthetic(n)
    y = np.array([1] * n_fake + [0] * (n - n_fake))
    with pytest.raises(ValueError, match=message):
        fit_calibrator(x, NAMES, y)


def test_bad_inputs_are_refused() -> None:
    x, y = synthetic(60)
    with pytest.raises(ValueError, match="score feature 'vote'"):
        fit_calibrator(x, NAMES, y, score_feature="vote")
    with pytest.raises(ValueError, match="finite"):
        fit_calibrator(np.where(x == x[0, 0], np.nan, x), NAMES, y)
    with pytest.raises(ValueError, match="0/1"):
        fit_calibrator(x, NAMES, y * 2)
    with pytest.raises(ValueError, match="named features"):
        fit_calibrator(x, NAMES[:2], y)
    with pytest.raises(ValueError, match="target_fpr"):
        fit_calibrator(x, NAMES, y, target_fpr=1.5)
