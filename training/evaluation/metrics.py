"""Evaluation figures with bootstrap 95% intervals.

Every figure is written as a function of per-row weights: the point estimate gives each row weight 1, a bootstrap
resample gives each row the number of times it (or its group) was drawn. One code path serves both, and 1000
resamples become a handful of matrix operations instead of 1000 calls into sklearn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import numpy as np
from numpy.typing import NDArray
from sklearn.metrics import roc_curve

from training.evaluation.records import (
    COUNTERFEIT,
    LIKELY_AUTHENTIC,
    LIKELY_COUNTERFEIT,
    NEEDS_REVIEW,
    NOT_IN_CATALOG,
    TRUTHS,
    UNRELATED,
    VERDICTS,
    EvalRecord,
)

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
IntArray = NDArray[np.intp]

ECE_BINS: Final = 10
FPR_BOUNDS: Final = {"tpr_at_fpr_1pct": 0.01, "tpr_at_fpr_5pct": 0.05}
CI_LEVEL: Final = 0.95
# A figure undefined in most resamples (e.g. a class that is rarely drawn) has no trustworthy interval.
MIN_VALID_FRACTION: Final = 0.5
SCALAR_FIGURES: Final = (
    "roc_auc",
    "pr_auc",
    "tpr_at_fpr_1pct",
    "tpr_at_fpr_5pct",
    "likely_counterfeit_precision",
    "likely_counterfeit_recall",
    "likely_counterfeit_fpr",
    "likely_authentic_miss_rate",
    "needs_review_rate",
    "catalog_not_in_catalog_rate",
    "ece",
    "product_recall_at_1",
    "product_recall_at_5",
    "unrelated_not_in_catalog_rate",
)
_CHUNK_CELLS: Final = 2_000_000  # weights per bootstrap chunk (16 MB of float64), so memory stays flat on big query sets
_TOLERANCE: Final = 1e-12  # FPRs are ratios of counts; absorb the last-bit error of the division


@dataclass(frozen=True)
class _Table:
    """The records as arrays, built once; ranking rows are the authentic/counterfeit rows sorted by score, descending."""

    binary: BoolArray
    positive: BoolArray
    unrelated: BoolArray
    verdict: NDArray[np.str_]
    risk: FloatArray
    has_risk: BoolArray
    has_product: BoolArray
    hit_at_1: BoolArray
    hit_at_5: BoolArray
    group: IntArray
    rank_rows: IntArray
    rank_positive: FloatArray
    tie_starts: IntArray


def compute_metrics(records: Sequence[EvalRecord], n_bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """All evaluation figures as a JSON-able dict, each scalar with a bootstrap 95% interval under `ci`.

    Counterfeit is the positive class; ranking figures (ROC-AUC, PR-AUC, recall at 1%/5% FPR) use the raw `score` of
    authentic and counterfeit rows, the verdict figures use `verdict`, and `ece` uses `risk`. A figure that does not
    apply (e.g. one class absent) is None, and so is its interval. Resamples draw listings with replacement, or whole
    groups when records carry a `group`; resamples where a figure is undefined are skipped for that figure.
    """
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be at least 0, not {n_bootstrap}")
    table = _table(records)
    n = len(records)
    point = {name: _json_float(values[0]) for name, values in _figures(table, np.ones((1, n))).items()}
    n_groups = int(table.group.max()) + 1 if n else 0
    intervals = _bootstrap(table, n_groups, n_bootstrap, seed)
    risked = [r for r in records if r.risk is not None]
    result: dict[str, Any] = {
        "n_queries": n,
        "n_authentic": int((table.binary & ~table.positive).sum()),
        "n_counterfeit": int(table.positive.sum()),
        "n_unrelated": int(table.unrelated.sum()),
        **point,
        # True/False when every risk is (un)calibrated; None when mixed or no risk at all.
        "calibrated": risked[0].calibrated if risked and len({r.calibrated for r in risked}) == 1 else None,
        "verdicts": verdict_counts(records),
        "ci": {name: intervals[name] if point[name] is not None else None for name in SCALAR_FIGURES},
        "bootstrap": {
            "n_resamples": n_bootstrap,
            "seed": seed,
            "level": CI_LEVEL,
            "unit": "group" if any(r.group is not None for r in records) else "listing",
            "n_units": n_groups,
        },
    }
    return result


def verdict_counts(records: Sequence[EvalRecord]) -> dict[str, dict[str, int]]:
    """Counts of verdict by truth, every pair present (zeros included): `{truth: {verdict: count}}`."""
    counts = {truth: dict.fromkeys(VERDICTS, 0) for truth in TRUTHS}
    for record in records:
        counts[record.truth][record.verdict] += 1
    return counts


class RocCurve(NamedTuple):
    """Every threshold of the ROC curve of `score` (counterfeit = positive), thresholds descending."""

    fpr: FloatArray
    tpr: FloatArray
    thresholds: FloatArray


class OperatingPoint(NamedTuple):
    fpr: float
    tpr: float
    threshold: float


def roc_points(records: Sequence[EvalRecord]) -> RocCurve | None:
    """The ROC curve of authentic vs counterfeit rows by `score`; None unless both classes are present."""
    rows = [r for r in records if r.truth != UNRELATED]
    labels = np.array([r.truth == COUNTERFEIT for r in rows], dtype=bool)
    if labels.all() or not labels.any():
        return None
    # Keep every threshold: dropped "intermediate" points can be the best one under an FPR bound.
    fpr, tpr, thresholds = roc_curve(labels, [r.score for r in rows], drop_intermediate=False)
    return RocCurve(np.asarray(fpr, dtype=float), np.asarray(tpr, dtype=float), np.asarray(thresholds, dtype=float))


def operating_point(curve: RocCurve, max_fpr: float) -> OperatingPoint:
    """The point of highest recall whose FPR is at most `max_fpr` (the curve always starts at FPR 0)."""
    allowed = np.flatnonzero(curve.fpr <= max_fpr + _TOLERANCE)
    best = allowed[np.argmax(curve.tpr[allowed])]
    return OperatingPoint(float(curve.fpr[best]), float(curve.tpr[best]), float(curve.thresholds[best]))


class ReliabilityBin(NamedTuple):
    low: float
    high: float
    n_rows: int
    mean_risk: float | None
    counterfeit_rate: float | None


def reliability_bins(records: Sequence[EvalRecord], n_bins: int = ECE_BINS) -> list[ReliabilityBin]:
    """Equal-width bins of `risk` over authentic/counterfeit rows with a risk: mean risk vs observed counterfeit share."""
    rows = [r for r in records if r.truth != UNRELATED and r.risk is not None]
    risk = np.array([r.risk for r in rows], dtype=float)
    fake = np.array([r.truth == COUNTERFEIT for r in rows], dtype=float)
    index = _bin_index(risk, n_bins)
    bins = []
    for b in range(n_bins):
        inside = index == b
        count = int(inside.sum())
        bins.append(
            ReliabilityBin(
                b / n_bins,
                (b + 1) / n_bins,
                count,
                float(risk[inside].mean()) if count else None,
                float(fake[inside].mean()) if count else None,
            )
        )
    return bins


def product_hits(record: EvalRecord, k: int) -> bool:
    """Whether one of the first `k` matches names the record's true product (and brand, when the record has one)."""
    if not record.product:
        return False
    return any(_same_product(record, match) for match in record.matches[:k])


def _same_product(record: EvalRecord, match: dict[str, Any]) -> bool:
    # Product names are only unique within a brand; compare both when the truth names the brand.
    if _name(match.get("product")) != _name(record.product):
        return False
    return record.brand is None or _name(match.get("brand")) == _name(record.brand)


def _name(value: object) -> str:
    return str(value or "").strip().casefold()


def _table(records: Sequence[EvalRecord]) -> _Table:
    truth = np.array([r.truth for r in records], dtype=str)
    binary, positive = truth != UNRELATED, truth == COUNTERFEIT
    score = np.array([r.score for r in records], dtype=float)
    risk = np.array([np.nan if r.risk is None else r.risk for r in records], dtype=float)
    rank_rows = np.flatnonzero(binary)
    rank_rows = rank_rows[np.argsort(-score[rank_rows], kind="stable")]
    ranked = score[rank_rows]
    # Rows with equal scores form one ROC step; sums over these blocks give the tie-aware curve.
    tie_starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]]) if ranked.size else np.zeros(0, dtype=np.intp)
    names: dict[str, int] = {}
    group = np.array(
        [names.setdefault(r.group if r.group is not None else f"\0row {i}", len(names)) for i, r in enumerate(records)]
    )
    return _Table(
        binary=binary,
        positive=positive,
        unrelated=~binary,
        verdict=np.array([r.verdict for r in records], dtype=str),
        risk=risk,
        has_risk=~np.isnan(risk),
        has_product=np.array([bool(r.product) for r in records], dtype=bool),
        hit_at_1=np.array([product_hits(r, 1) for r in records], dtype=bool),
        hit_at_5=np.array([product_hits(r, 5) for r in records], dtype=bool),
        group=group.astype(np.intp),
        rank_rows=rank_rows.astype(np.intp),
        rank_positive=positive[rank_rows].astype(float),
        tie_starts=tie_starts.astype(np.intp),
    )


def _figures(t: _Table, w: FloatArray) -> dict[str, FloatArray]:
    """Every scalar figure for each row of the weight matrix `w` (resamples x records); NaN where undefined."""
    verdict_is = {v: t.verdict == v for v in VERDICTS}
    authentic = t.binary & ~t.positive
    flagged = t.binary & verdict_is[LIKELY_COUNTERFEIT]
    with_product = t.binary & t.has_product
    return {
        **_ranking(t, w),
        "likely_counterfeit_precision": _share(w, flagged & t.positive, flagged),
        "likely_counterfeit_recall": _share(w, t.positive & verdict_is[LIKELY_COUNTERFEIT], t.positive),
        "likely_counterfeit_fpr": _share(w, authentic & verdict_is[LIKELY_COUNTERFEIT], authentic),
        "likely_authentic_miss_rate": _share(w, t.positive & verdict_is[LIKELY_AUTHENTIC], t.positive),
        "needs_review_rate": _share(w, t.binary & verdict_is[NEEDS_REVIEW], t.binary),
        "catalog_not_in_catalog_rate": _share(w, t.binary & verdict_is[NOT_IN_CATALOG], t.binary),
        "ece": _ece(t, w),
        "product_recall_at_1": _share(w, with_product & t.hit_at_1, with_product),
        "product_recall_at_5": _share(w, with_product & t.hit_at_5, with_product),
        "unrelated_not_in_catalog_rate": _share(w, t.unrelated & verdict_is[NOT_IN_CATALOG], t.unrelated),
    }


def _share(w: FloatArray, hits: BoolArray, among: BoolArray) -> FloatArray:
    """Weighted share of `among` rows that are `hits` (a subset of `among`); NaN when no `among` row has weight."""
    total = w @ among.astype(float)
    share: FloatArray = np.divide(w @ hits.astype(float), total, out=np.full(total.shape, np.nan), where=total > 0)
    return share


def _ranking(t: _Table, w: FloatArray) -> dict[str, FloatArray]:
    """ROC-AUC (ties count half), average precision and recall at the FPR bounds, from one pass over the tie blocks."""
    undefined = np.full(w.shape[0], np.nan)
    if t.rank_rows.size == 0:
        return {"roc_auc": undefined, "pr_auc": undefined, **dict.fromkeys(FPR_BOUNDS, undefined)}
    ranked = w[:, t.rank_rows]
    pos = np.add.reduceat(ranked * t.rank_positive, t.tie_starts, axis=1)
    neg = np.add.reduceat(ranked * (1.0 - t.rank_positive), t.tie_starts, axis=1)
    cum_pos, cum_neg = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
    total_pos, total_neg = cum_pos[:, -1], cum_neg[:, -1]
    defined = (total_pos > 0) & (total_neg > 0)
    safe_pos, safe_neg = np.where(defined, total_pos, 1.0), np.where(defined, total_neg, 1.0)
    # Each negative is beaten by every positive in a higher block and ties with half of its own block.
    auc = (neg * (cum_pos - 0.5 * pos)).sum(axis=1) / (safe_pos * safe_neg)
    called = cum_pos + cum_neg
    precision = np.divide(cum_pos, called, out=np.zeros_like(called), where=called > 0)
    # sklearn's step-wise average precision: precision at each threshold times the recall it adds.
    average_precision = (pos * precision).sum(axis=1) / safe_pos
    tpr, fpr = cum_pos / safe_pos[:, None], cum_neg / safe_neg[:, None]
    result = {"roc_auc": auc, "pr_auc": average_precision}
    for name, bound in FPR_BOUNDS.items():
        # The curve starts at (0, 0) above the highest score, hence the floor of 0.
        result[name] = np.where(fpr <= bound + _TOLERANCE, tpr, 0.0).max(axis=1)
    return {name: np.where(defined, values, np.nan) for name, values in result.items()}


def _ece(t: _Table, w: FloatArray) -> FloatArray:
    """Expected calibration error: Σ_bins |Σ w·(y - risk)| / Σ w over authentic/counterfeit rows with a risk."""
    rows = np.flatnonzero(t.binary & t.has_risk)
    if rows.size == 0:
        return np.full(w.shape[0], np.nan)
    one_hot = np.eye(ECE_BINS)[_bin_index(t.risk[rows], ECE_BINS)]
    gap = (t.positive[rows].astype(float) - t.risk[rows])[:, None] * one_hot
    total = w[:, rows].sum(axis=1)
    errors = np.abs(w[:, rows] @ gap).sum(axis=1)
    ece: FloatArray = np.divide(errors, total, out=np.full(total.shape, np.nan), where=total > 0)
    return ece


def _bin_index(values: FloatArray, n_bins: int) -> IntArray:
    # Equal-width bins on [0, 1]; a risk of exactly 1 belongs to the last bin.
    return np.clip(np.floor(values * n_bins), 0, n_bins - 1).astype(np.intp)


def _bootstrap(t: _Table, n_groups: int, n_bootstrap: int, seed: int) -> dict[str, list[float] | None]:
    """Percentile intervals from `n_bootstrap` resamples of the groups (each listing its own group by default)."""
    if n_bootstrap == 0 or n_groups == 0:
        return dict.fromkeys(SCALAR_FIGURES, None)
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // t.group.size)
    samples: dict[str, list[FloatArray]] = {name: [] for name in SCALAR_FIGURES}
    for start in range(0, n_bootstrap, chunk):
        size = min(chunk, n_bootstrap - start)
        # How often each group is drawn when drawing n_groups groups with replacement, spread onto its rows.
        drawn = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=size).astype(float)
        for name, values in _figures(t, drawn[:, t.group]).items():
            samples[name].append(values)
    tail = (1.0 - CI_LEVEL) / 2
    needed = max(2, math.ceil(MIN_VALID_FRACTION * n_bootstrap))
    intervals: dict[str, list[float] | None] = {}
    for name, parts in samples.items():
        values = np.concatenate(parts)
        values = values[~np.isnan(values)]
        if values.size < needed:
            intervals[name] = None
            continue
        low, high = np.quantile(values, [tail, 1.0 - tail])
        intervals[name] = [float(low), float(high)]
    return intervals


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else float(value)
