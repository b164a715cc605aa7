"""The authenticity head: a regularised logistic regression on detail features (`embeddings.detail`) that tells a
brand's fakes from its authentic products, calibrated on its own out-of-fold scores.

One head per brand. Products with enough photos of both labels get weights of their own on top of the brand's shared
weights (the features are stacked as [x, x if product p, ...], so the regularisation pulls each product's weights
towards the brand's: a product with few photos leans on the brand, one with many learns its own fakes); a product
without enough photos, or new since the fit, is scored by the shared weights alone. Everything is chosen by
cross-validation whose folds keep each photo shoot (`group`) whole, because near-copies of one shoot on both sides of
a fold flatter any model: the regularisation strength, the Platt scaling that turns the head's margin into a
probability, and the verdict bands that keep the target false-positive and miss rates. The result holds plain arrays,
saved without pickle.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold

from embeddings.verdict_bands import choose_thresholds

HEADS_FORMAT = "counterfeit-scan/authenticity-heads-v1"


@dataclass(frozen=True)
class LabelledPhotos:
    """Detail features of labelled photos with what the head groups them by."""

    features: np.ndarray  # (n, d) float32
    is_counterfeit: np.ndarray  # (n,) bool
    groups: tuple[str, ...]
    brands: tuple[str, ...]
    products: tuple[str, ...]
    layout: str

    def __len__(self) -> int:
        return len(self.is_counterfeit)

    def __add__(self, other: LabelledPhotos) -> LabelledPhotos:
        if len(other) == 0:
            return self
        if len(self) == 0:
            return other
        if other.layout != self.layout or other.features.shape[1] != self.features.shape[1]:
            raise ValueError(f"detail features of layout {other.layout!r} cannot join {self.layout!r}")
        return LabelledPhotos(
            np.concatenate([self.features, other.features]),
            np.concatenate([self.is_counterfeit, other.is_counterfeit]),
            self.groups + other.groups,
            self.brands + other.brands,
            self.products + other.products,
            self.layout,
        )

    def digest(self) -> str:
        """Names the training set: labels, groups, scopes and the features' bytes."""
        h = hashlib.sha256(self.layout.encode())
        h.update(np.ascontiguousarray(self.features, dtype=np.float16).tobytes())
        h.update(np.ascontiguousarray(self.is_counterfeit, dtype=np.uint8).tobytes())
        h.update("\0".join(self.groups + self.brands + self.products).encode())
        return h.hexdigest()

    def to_payload(self) -> dict[str, Any]:
        """Plain lists and a float16 buffer: what a checkpoint carries (readable by torch.load(weights_only=True))."""
        return {
            "layout": self.layout,
            "shape": list(self.features.shape),
            "features_f16": np.ascontiguousarray(self.features, dtype=np.float16).tobytes(),
            "is_counterfeit": [bool(v) for v in self.is_counterfeit],
            "groups": list(self.groups),
            "brands": list(self.brands),
            "products": list(self.products),
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> LabelledPhotos:
        rows, dim = (int(v) for v in payload["shape"])
        features = np.frombuffer(payload["features_f16"], dtype=np.float16).reshape(rows, dim).astype(np.float32)
        return cls(
            features,
            np.asarray(payload["is_counterfeit"], dtype=bool),
            tuple(payload["groups"]),
            tuple(payload["brands"]),
            tuple(payload["products"]),
            str(payload["layout"]),
        )

    def subset(self, rows: np.ndarray) -> LabelledPhotos:
        return LabelledPhotos(
            self.features[rows],
            self.is_counterfeit[rows],
            tuple(self.groups[i] for i in rows),
            tuple(self.brands[i] for i in rows),
            tuple(self.products[i] for i in rows),
            self.layout,
        )


@dataclass(frozen=True)
class HeadOptions:
    """How heads are fitted. Defaults chosen by grouped CV on ../shared/data/sneakers (see benchmarks/README.md,
    section "Authenticity head")."""

    c_grid: tuple[float, ...] = (0.3, 1.0, 3.0)
    max_folds: int = 5
    cv_repeats: int = 3  # shuffles of the grouped folds averaged for the chosen strength
    min_per_label: int = 10  # per brand for a head, per product for weights of its own
    min_groups_per_label: int = 2
    target_fpr: float = 0.01
    target_miss_rate: float = 0.05
    seed: int = 0


@dataclass(frozen=True)
class FittedHead:
    """One brand's head: P(counterfeit) = sigmoid(slope * (x · (coef + product's coef) + intercept) + offset)."""

    brand: str
    products: tuple[str, ...]  # the products with weights of their own, in the order of `product_coef`'s rows
    coef: np.ndarray = field(repr=False)
    product_coef: np.ndarray = field(repr=False)
    intercept: float
    platt_slope: float
    platt_offset: float
    likely_counterfeit: float
    likely_authentic: float
    n_authentic: int
    n_counterfeit: int
    n_groups: int
    folds: int
    c: float
    cv_roc_auc: float
    cv_ece: float

    def scope(self, product: str | None) -> str:
        """What scored a photo of `product`: the brand's own weights for it, or the brand's shared ones."""
        return f"{self.brand}/{product}" if product in self.products else self.brand

    def probability(self, features: np.ndarray, product: str | None = None) -> np.ndarray:
        """P(counterfeit) of photos (rows of `features`) of one product of this brand."""
        weights = self.coef
        if product in self.products:
            weights = weights + self.product_coef[self.products.index(product)]
        margin = np.asarray(features, dtype=np.float64) @ weights + self.intercept
        return _sigmoid(self.platt_slope * margin + self.platt_offset)

    def describe(self) -> dict[str, object]:
        """Trace of the head behind a score: its scope, training counts and validation figures."""
        return {
            "scope": self.brand,
            "products": list(self.products),
            "n_authentic": self.n_authentic,
            "n_counterfeit": self.n_counterfeit,
            "n_groups": self.n_groups,
            "cv_roc_auc": round(self.cv_roc_auc, 4),
            "cv_ece": round(self.cv_ece, 4),
            "c": self.c,
        }

    def meta(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("coef")
        out.pop("product_coef")
        out["products"] = list(self.products)
        return out


@dataclass(frozen=True)
class HeadSet:
    """Every head of one fit, with what it was fitted on. `version` changes iff the training set or options do."""

    version: str
    fingerprint: str
    layout: str
    catalog_revision: int
    fitted_at: str
    heads: dict[str, FittedHead]
    skipped: dict[str, str]
    n_photos: int
    n_extra_photos: int

    def head_for(self, brand: str) -> FittedHead | None:
        return self.heads.get(brand)

    def summary(self) -> dict[str, object]:
        return {
            "version": self.version,
            "catalog_revision": self.catalog_revision,
            "fitted_at": self.fitted_at,
            "n_photos": self.n_photos,
            "n_extra_photos": self.n_extra_photos,
            "scopes": sorted(f"{b}/{p}" for b, head in self.heads.items() for p in head.products) or sorted(self.heads),
        }

    def save(self, path: Path) -> None:
        """One .npz (each head's weights as rows: shared, then its products'; the rest as JSON), written to a temp
        file then renamed into place."""
        path.parent.mkdir(parents=True, exist_ok=True)
        heads = list(self.heads.values())
        meta = {
            "format": HEADS_FORMAT,
            **{k: v for k, v in asdict(self).items() if k != "heads"},
            "heads": [head.meta() for head in heads],
        }
        rows = [row for h in heads for row in (h.coef, *h.product_coef)]
        tmp = path.with_name(f"{path.name}.{secrets.token_hex(6)}.tmp.npz")  # service replicas may save at once
        weights = np.stack(rows) if rows else np.empty((0, 0))
        np.savez(tmp, coef=weights, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> HeadSet:
        """Raises ValueError when the file is not a head set."""
        try:
            with np.load(path, allow_pickle=False) as data:
                weights, meta = data["coef"], json.loads(bytes(data["meta"]).decode())
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"{path} is not a readable head set: {exc}") from exc
        if meta.get("format") != HEADS_FORMAT:
            raise ValueError(f"{path} is not in format {HEADS_FORMAT}")
        heads, row = {}, 0
        for head_meta in meta.pop("heads"):
            products = tuple(head_meta.pop("products"))
            block = np.asarray(weights[row : row + 1 + len(products)], dtype=np.float64)
            heads[head_meta["brand"]] = FittedHead(products=products, coef=block[0], product_coef=block[1:], **head_meta)
            row += 1 + len(products)
        meta.pop("format")
        return cls(heads=heads, **meta)


def fit_heads(
    photos: LabelledPhotos,
    options: HeadOptions,
    *,
    fingerprint: str,
    catalog_revision: int,
    n_extra_photos: int = 0,
) -> HeadSet:
    """Fit every brand's head; brands with too little data are skipped with the reason."""
    heads: dict[str, FittedHead] = {}
    skipped: dict[str, str] = {}
    brands = np.asarray(photos.brands)
    for brand in sorted(set(photos.brands)):
        fitted = _fit_brand(photos.subset(np.flatnonzero(brands == brand)), options, brand)
        if isinstance(fitted, str):
            skipped[brand] = fitted
        else:
            heads[brand] = fitted
    version_source = json.dumps([photos.digest(), fingerprint, asdict(options)], sort_keys=True)
    return HeadSet(
        version="head_" + hashlib.sha256(version_source.encode()).hexdigest()[:12],
        fingerprint=fingerprint,
        layout=photos.layout,
        catalog_revision=catalog_revision,
        fitted_at=datetime.now(UTC).isoformat(),
        heads=heads,
        skipped=skipped,
        n_photos=len(photos),
        n_extra_photos=n_extra_photos,
    )


def _enough(y: np.ndarray, groups: np.ndarray, options: HeadOptions) -> str | None:
    """Why these photos cannot train (or validate) a head, or None when they can."""
    n_fake = int(y.sum())
    n_real = len(y) - n_fake
    fake_groups, real_groups = len(set(groups[y == 1])), len(set(groups[y == 0]))
    if min(n_fake, n_real) < options.min_per_label or min(fake_groups, real_groups) < options.min_groups_per_label:
        return (
            f"too few labelled photos: {n_real} authentic in {real_groups} shoots, {n_fake} counterfeit in "
            f"{fake_groups} shoots (a head needs {options.min_per_label} of each, from at least "
            f"{options.min_groups_per_label} shoots each)"
        )
    return None


def _design(features: np.ndarray, products: np.ndarray, own: Sequence[str]) -> sparse.csr_matrix:
    """[x, x if product is own[0], x if product is own[1], ...] as a sparse matrix (two blocks set per row)."""
    blocks = [sparse.csr_matrix(features)]
    for product in own:
        blocks.append(sparse.csr_matrix(features * (products == product)[:, None]))
    return sparse.hstack(blocks, format="csr")


def _fit_brand(photos: LabelledPhotos, options: HeadOptions, brand: str) -> FittedHead | str:
    """The brand's head, or why it cannot be fitted."""
    y = photos.is_counterfeit.astype(int)
    groups = np.asarray(photos.groups)
    problem = _enough(y, groups, options)
    if problem:
        return problem
    products = np.asarray(photos.products)
    own = tuple(p for p in sorted(set(photos.products)) if _enough(y[products == p], groups[products == p], options) is None)
    own = own if len(own) > 1 else ()  # a brand of one product: the shared weights are that product's
    x = _design(photos.features, products, own)
    n_folds = min(options.max_folds, len(set(groups[y == 1])), len(set(groups[y == 0])))
    best: tuple[float, float, np.ndarray] | None = None
    for c in options.c_grid:
        oof = _out_of_fold(x, y, groups, c, n_folds, options.seed)
        auc = float(roc_auc_score(y, oof))
        if best is None or auc > best[0] + 1e-9:  # ties keep the stronger regularisation (the grid is increasing)
            best = (auc, c, oof)
    assert best is not None
    _, c, first = best
    # More shuffles of the folds for the chosen strength: one split of a few dozen shoots is noisy, and the Platt
    # scaling and the bands are fitted on these margins.
    repeats = [first] + [_out_of_fold(x, y, groups, c, n_folds, options.seed + r) for r in range(1, options.cv_repeats)]
    oof = np.mean(repeats, axis=0)
    auc = float(roc_auc_score(y, oof))
    platt = LogisticRegression(C=1e4, max_iter=1000).fit(oof.reshape(-1, 1), y)
    slope, offset = float(platt.coef_[0, 0]), float(platt.intercept_[0])
    oof_probability = _sigmoid(slope * oof + offset)
    bands = choose_thresholds(oof_probability, y, options.target_fpr, options.target_miss_rate)
    final = _logistic(c).fit(x, y)
    weights = np.asarray(final.coef_[0], dtype=np.float64).reshape(1 + len(own), -1)
    return FittedHead(
        brand=brand,
        products=own,
        coef=weights[0],
        product_coef=weights[1:],
        intercept=float(final.intercept_[0]),
        platt_slope=slope,
        platt_offset=offset,
        likely_counterfeit=bands["likely_counterfeit"],
        likely_authentic=bands["likely_authentic"],
        n_authentic=int(len(y) - y.sum()),
        n_counterfeit=int(y.sum()),
        n_groups=len(set(photos.groups)),
        folds=n_folds,
        c=c,
        cv_roc_auc=auc,
        cv_ece=float(expected_calibration_error(oof_probability, y)),
    )


def _out_of_fold(features: sparse.csr_matrix, y: np.ndarray, groups: np.ndarray, c: float, n_folds: int, seed: int) -> np.ndarray:
    """Margins of each photo from a head fitted without its shoot."""
    oof = np.empty(len(y))
    for train, test in StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed).split(features, y, groups):
        oof[test] = _logistic(c).fit(features[train], y[train]).decision_function(features[test])
    return oof


def expected_calibration_error(probability: Sequence[float] | np.ndarray, truth: Iterable[int], bins: int = 10) -> float:
    """Mean |observed rate - mean probability| over equal-width probability bins, weighted by their counts."""
    p = np.asarray(probability, dtype=float)
    y = np.asarray(list(truth), dtype=float)
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.sum() * abs(float(y[inside].mean()) - float(p[inside].mean()))
    return total / max(1, len(p))


def _logistic(c: float) -> LogisticRegression:
    return LogisticRegression(C=c, max_iter=2000)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64))))
