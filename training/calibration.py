"""Fit the calibrator that maps a listing's scoring features to P(counterfeit), and the verdict thresholds.

Two candidates are compared on out-of-fold log-loss (stratified 5-fold): Platt scaling (logistic regression on all
standardised features) and isotonic regression on the raw score alone. The winner is refitted on all rows; the
thresholds come from its out-of-fold probabilities, so they are not tuned on predictions the model made for rows it
was fitted on. The result is a JSON-able dict (format `counterfeit-scan/calibrator-v1`) that the service applies
with numpy alone:

- platt: `p = sigmoid(((x - mean) / scale) · coef + intercept)` over `features`, in order;
- isotonic: `p = np.interp(x[feature], x, y)` (x increasing; clipped to the end values outside the fitted range).

The service answers `likely_counterfeit` when `p >= thresholds.likely_counterfeit` and `likely_authentic` when
`p <= thresholds.likely_authentic`; anything between goes to review. The probabilities carry the calibration set's
share of fakes as their base rate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import expit
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, log_loss
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from embeddings.verdict_bands import NEVER_CLEAR, NEVER_FLAG, choose_thresholds

__all__ = ["FORMAT", "NEVER_CLEAR", "NEVER_FLAG", "apply_calibrator", "choose_thresholds", "fit_calibrator"]

FloatArray = NDArray[np.float64]

FORMAT: Final = "counterfeit-scan/calibrator-v1"
METHODS: Final = ("platt", "isotonic")
MIN_ROWS: Final = 20
MIN_PER_CLASS: Final = 5  # stratified 5-fold needs one row of each class per fold
N_FOLDS: Final = 5
PLATT_C: Final = 1.0  # mild L2: keeps the fit finite when the calibration set happens to be separable
PROBABILITY_CLIP: Final = 1e-6


def fit_calibrator(
    features: np.ndarray,
    feature_names: Sequence[str],
    is_counterfeit: np.ndarray,
    *,
    score_feature: str = "score",
    target_fpr: float = 0.01,
    target_miss_rate: float = 0.05,
    seed: int = 0,
    groups: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Fit Platt and isotonic calibrators, keep the one with the lower cross-validated log-loss, derive thresholds.

    `features` is (rows x features) in the order of `feature_names`; `is_counterfeit` holds the truth (bool or 0/1).
    `likely_counterfeit` is the smallest out-of-fold probability at which at most `target_fpr` of authentic rows
    would be flagged (`NEVER_FLAG`, just above 1, when none is); `likely_authentic` is the largest at which at most
    `target_miss_rate` of fakes would be cleared (`NEVER_CLEAR`, just below 0, when none is). When they cross, both
    targets can be met without a review band: the boundary goes midway between them, with `likely_authentic` one
    float below it. Raises ValueError on fewer than MIN_ROWS rows or MIN_PER_CLASS of either class.
    With `groups` (e.g. photo sessions), folds keep each group whole, so near-copies cannot flatter the held-out fit.
    """
    x, y, names = _validated(features, feature_names, is_counterfeit, score_feature, target_fpr, target_miss_rate)
    score = names.index(score_feature)
    oof = {method: np.empty(len(y)) for method in METHODS}
    grouped = groups is not None and len(set(groups)) >= N_FOLDS
    if grouped:
        assert groups is not None
        folds = StratifiedGroupKFold(N_FOLDS, shuffle=True, random_state=seed).split(x, y, np.asarray(groups))
    else:
        folds = StratifiedKFold(N_FOLDS, shuffle=True, random_state=seed).split(x, y)
    for train, test in folds:
        oof["platt"][test] = _fit_platt(x[train], y[train]).predict_proba(x[test])[:, 1]
        oof["isotonic"][test] = _fit_isotonic(x[train, score], y[train]).predict(x[test, score])
    clipped = {m: np.clip(p, PROBABILITY_CLIP, 1.0 - PROBABILITY_CLIP) for m, p in oof.items()}
    losses = {m: float(log_loss(y, p, labels=[0, 1])) for m, p in clipped.items()}
    briers = {m: float(brier_score_loss(y, p)) for m, p in oof.items()}
    # On a tie keep Platt: fewer degrees of freedom, and a smooth map that never answers exactly 0 or 1.
    method = "platt" if losses["platt"] <= losses["isotonic"] else "isotonic"
    thresholds = choose_thresholds(oof[method], y, target_fpr, target_miss_rate)
    high, low = thresholds["likely_counterfeit"], thresholds["likely_authentic"]
    authentic, fake = oof[method][y == 0], oof[method][y == 1]
    platt, isotonic = _fit_platt(x, y), _fit_isotonic(x[:, score], y)
    scaler, regression = platt[0], platt[-1]
    return {
        "format": FORMAT,
        "method": method,
        "features": names,
        "platt": {
            "mean": _floats(scaler.mean_),
            "scale": _floats(scaler.scale_),
            "coef": _floats(regression.coef_[0]),
            "intercept": float(regression.intercept_[0]),
        },
        "isotonic": {"feature": score_feature, "x": _floats(isotonic.X_thresholds_), "y": _floats(isotonic.y_thresholds_)},
        "thresholds": {"likely_counterfeit": high, "likely_authentic": low},
        "fit": {
            "n": len(y),
            "n_counterfeit": int(y.sum()),
            "n_folds": N_FOLDS,
            "folds": "by group" if grouped else "by row",
            "cv_log_loss": losses,
            "cv_brier": briers,
            "target_fpr": target_fpr,
            "target_miss_rate": target_miss_rate,
            "oof_fpr_at_threshold": float(np.mean(authentic >= high)),
            "oof_tpr_at_threshold": float(np.mean(fake >= high)),
            "oof_miss_rate_at_threshold": float(np.mean(fake <= low)),
            "oof_review_rate": float(np.mean((oof[method] > low) & (oof[method] < high))),
            "seed": seed,
        },
    }


def apply_calibrator(spec: Mapping[str, Any], features_matrix: ArrayLike, feature_names: Sequence[str]) -> FloatArray:
    """P(counterfeit) for each row of `features_matrix` (columns named by `feature_names`, any order, extras ignored)."""
    if spec.get("format") != FORMAT:
        raise ValueError(f"not a calibrator of format {FORMAT!r}: {spec.get('format')!r}")
    x = np.asarray(features_matrix, dtype=float)
    if x.ndim != 2 or x.shape[1] != len(feature_names):
        raise ValueError(f"features_matrix must be (rows x {len(feature_names)} named features), not {x.shape}")
    names = list(feature_names)
    method = spec["method"]
    if method == "platt":
        block = spec["platt"]
        columns = x[:, _columns(names, spec["features"])]
        z = ((columns - np.asarray(block["mean"])) / np.asarray(block["scale"])) @ np.asarray(block["coef"]) + block["intercept"]
        probabilities: FloatArray = expit(z)
        return probabilities
    if method == "isotonic":
        block = spec["isotonic"]
        values = x[:, _columns(names, [block["feature"]])[0]]
        interpolated: FloatArray = np.interp(values, np.asarray(block["x"], dtype=float), np.asarray(block["y"], dtype=float))
        return interpolated
    raise ValueError(f"unknown calibration method {method!r}; expected one of {', '.join(METHODS)}")


def _fit_platt(x: FloatArray, y: NDArray[np.int_]) -> Pipeline:
    return make_pipeline(StandardScaler(), LogisticRegression(C=PLATT_C, max_iter=1000)).fit(x, y)


def _fit_isotonic(score: FloatArray, y: NDArray[np.int_]) -> IsotonicRegression:
    # Increasing by contract: a higher raw score never means a lower chance of a fake.
    return IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(score, y)


def _columns(names: list[str], wanted: Sequence[str]) -> list[int]:
    missing = [name for name in wanted if name not in names]
    if missing:
        raise ValueError(f"the calibrator needs features missing here: {', '.join(missing)}")
    return [names.index(name) for name in wanted]


def _validated(
    features: np.ndarray,
    feature_names: Sequence[str],
    is_counterfeit: np.ndarray,
    score_feature: str,
    target_fpr: float,
    target_miss_rate: float,
) -> tuple[FloatArray, NDArray[np.int_], list[str]]:
    x = np.asarray(features, dtype=float)
    names = [str(name) for name in feature_names]
    if x.ndim != 2 or x.shape[1] != len(names):
        raise ValueError(f"features must be (rows x {len(names)} named features), not {x.shape}")
    if len(set(names)) != len(names):
        raise ValueError(f"feature names must be unique: {names}")
    if score_feature not in names:
        raise ValueError(f"score feature {score_feature!r} is not among the features {names}")
    if not np.isfinite(x).all():
        raise ValueError("features must be finite numbers (no NaN or infinity)")
    truth = np.asarray(is_counterfeit)
    if truth.shape != (x.shape[0],) or not np.isin(truth, (0, 1)).all():
        raise ValueError(f"is_counterfeit must hold one 0/1 (or bool) per row: {x.shape[0]} rows")
    y = truth.astype(int)
    n_fake = int(y.sum())
    if len(y) < MIN_ROWS or min(n_fake, len(y) - n_fake) < MIN_PER_CLASS:
        raise ValueError(
            f"calibration needs at least {MIN_ROWS} rows with at least {MIN_PER_CLASS} authentic and {MIN_PER_CLASS} "
            f"counterfeit; got {len(y)} rows ({len(y) - n_fake} authentic, {n_fake} counterfeit)"
        )
    for name, target in (("target_fpr", target_fpr), ("target_miss_rate", target_miss_rate)):
        if not 0.0 <= target < 1.0:
            raise ValueError(f"{name} must be in [0, 1), not {target}")
    return x, y, names


def _floats(values: ArrayLike) -> list[float]:
    return [float(v) for v in np.asarray(values, dtype=float)]
