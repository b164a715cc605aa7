"""The one place that turns a photo's evidence into features, a risk, a verdict and reasons.

The evidence: the authenticity head's probability (a model of the brand's or product's fakes, calibrated on its own
out-of-fold scores, `embeddings/authenticity.py`), the kNN hits (nearest authentic and nearest known fake of the same
product, a similarity-weighted vote) and near-duplicates of known fakes or official photos. Which one sets the risk:

- a calibrator fitted by `counterfeit-scan calibrate` on held-out listings: its probability over all the features;
- else the head's probability where the photos' brand has a head (bands: the head's, which keep `target_fpr`);
- else the raw kNN vote, uncalibrated, with the reason why there is no head.

A near copy of a known fake's photo lifts the risk to at least NEAR_DUP_FAKE_SCORE whatever the rest says.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

Verdict = Literal["likely_counterfeit", "needs_review", "likely_authentic", "not_in_catalog"]
FEATURES = (
    "score", "max_score", "margin", "top_similarity", "spread", "near_dup_fake", "near_dup_authentic", "head_probability",
)  # fmt: skip
NEAR_DUP_FAKE_SCORE = 0.95


@dataclass(frozen=True)
class Match:
    image_id: str
    brand: str
    product: str
    label: str
    similarity: float

    def as_dict(self) -> dict[str, object]:
        # Spelled out: dataclasses.asdict (a recursive deep copy) costs many times more per match, and there are
        # top_k matches per photo on the finishing thread (see benchmarks/README.md, "What changed on 2026-11-30")
        return {
            "image_id": self.image_id,
            "brand": self.brand,
            "product": self.product,
            "label": self.label,
            "similarity": round(self.similarity, 6),
        }


@dataclass(frozen=True)
class NearDuplicate:
    image_id: str
    brand: str
    product: str
    label: str
    distance: int

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class HeadOpinion:
    """The authenticity head's probability for one photo, with what a reader needs to weigh it."""

    probability: float
    brand: str
    scope: str
    version: str
    n_authentic: int
    n_counterfeit: int
    cv_roc_auc: float
    likely_counterfeit: float
    likely_authentic: float


@dataclass(frozen=True)
class PhotoEvidence:
    """What the index, the hash table and the authenticity head found for one photo, best match first."""

    matches: Sequence[Match]
    near_duplicates: Sequence[NearDuplicate] = ()
    head: HeadOpinion | None = None


@dataclass(frozen=True)
class ScoringParams:
    match_threshold: float
    counterfeit_threshold: float
    authentic_threshold: float
    vote_temperature: float


class Calibrator(Protocol):
    """Maps listing features to P(counterfeit); fitted by `counterfeit-scan calibrate`."""

    @property
    def likely_counterfeit(self) -> float: ...

    @property
    def likely_authentic(self) -> float: ...

    def probability(self, features: dict[str, float]) -> float: ...


@dataclass(frozen=True)
class Reason:
    code: str
    message: str
    values: dict[str, object] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message, **self.values}


@dataclass(frozen=True)
class PhotoScore:
    score: float | None
    in_catalog: bool
    top: Match | None
    nearest_authentic: float | None
    nearest_counterfeit: float | None
    margin: float | None
    near_duplicates: Sequence[NearDuplicate]
    head: HeadOpinion | None = None

    @property
    def head_probability(self) -> float | None:
        """The head's probability, lifted by a near copy of a known fake; None without a head or a catalog match."""
        if self.head is None or not self.in_catalog:
            return None
        if self.near_dup_fake is not None:
            return max(self.head.probability, NEAR_DUP_FAKE_SCORE)
        return self.head.probability

    @property
    def near_dup_fake(self) -> NearDuplicate | None:
        return next((d for d in self.near_duplicates if d.label == "counterfeit"), None)

    @property
    def near_dup_authentic(self) -> NearDuplicate | None:
        return next((d for d in self.near_duplicates if d.label == "authentic"), None)


@dataclass(frozen=True)
class ListingScore:
    risk: float | None
    score: float | None
    verdict: Verdict
    calibrated: bool
    photos: Sequence[PhotoScore]
    features: dict[str, float]
    reasons: list[Reason]


def score_photo(evidence: PhotoEvidence, params: ScoringParams) -> PhotoScore:
    """Features of one photo: fake vote over its matches, same-product margin, near-duplicates."""
    matches = evidence.matches
    if not matches:
        return PhotoScore(None, False, None, None, None, None, evidence.near_duplicates, evidence.head)
    top = matches[0]
    weights = [math.exp((m.similarity - top.similarity) / params.vote_temperature) for m in matches]
    vote = sum(w for w, m in zip(weights, matches, strict=True) if m.label == "counterfeit") / sum(weights)
    same = [m for m in matches if (m.brand, m.product) == (top.brand, top.product)]
    floor = matches[-1].similarity  # an unseen label is at most as similar as the last match seen
    fake = max((m.similarity for m in same if m.label == "counterfeit"), default=None)
    real = max((m.similarity for m in same if m.label == "authentic"), default=None)
    margin = (fake if fake is not None else floor) - (real if real is not None else floor)
    in_catalog = top.similarity >= params.match_threshold
    photo = PhotoScore(vote, in_catalog, top, real, fake, margin, evidence.near_duplicates, evidence.head)
    if photo.near_dup_fake is not None:
        # A near copy of a known fake's photo is strong evidence whatever the embedding says.
        return PhotoScore(max(vote, NEAR_DUP_FAKE_SCORE), True, top, real, fake, margin, evidence.near_duplicates, evidence.head)
    return photo


def listing_features(photos: Sequence[PhotoScore]) -> dict[str, float]:
    """The calibrator's inputs; names in FEATURES. Photos outside the catalog count only when all are."""
    scored = [p for p in photos if p.score is not None]
    used = [p for p in scored if p.in_catalog] or scored
    scores = [p.score for p in used if p.score is not None]
    margins = [p.margin for p in used if p.margin is not None]
    heads = [p.head_probability for p in used if p.head_probability is not None]
    vote = sum(scores) / len(scores) if scores else 0.0
    return {
        "score": vote,
        "max_score": max(scores, default=0.0),
        "margin": sum(margins) / len(margins) if margins else 0.0,
        "top_similarity": max((p.top.similarity for p in photos if p.top is not None), default=0.0),
        "spread": (max(scores) - min(scores)) if scores else 0.0,
        "near_dup_fake": float(any(p.near_dup_fake is not None for p in photos)),
        "near_dup_authentic": float(any(p.near_dup_authentic is not None for p in photos)),
        # Photos without a head (a brand with too few labelled photos) count with their vote, as the risk does.
        "head_probability": sum(heads) / len(heads) if heads else vote,
    }


def score_listing(
    evidence: Sequence[PhotoEvidence],
    params: ScoringParams,
    calibrator: Calibrator | None = None,
    head_missing: str | None = None,
) -> ListingScore:
    """Score a listing's photos: features, risk (see the module docstring), verdict and reasons. `head_missing` says why
    the photos' brand has no authenticity head, when it has none."""
    photos = [score_photo(e, params) for e in evidence]
    features = listing_features(photos)
    reasons = _photo_reasons(photos)
    raw = features["score"] if any(p.score is not None for p in photos) else None
    if not any(p.in_catalog for p in photos):
        best = max((p.top.similarity for p in photos if p.top is not None), default=None)
        shown = "no reference images to compare with" if best is None else f"best similarity {best:.3f}"
        reasons.insert(
            0,
            Reason(
                "not_in_catalog",
                f"no photo resembles a reference image closely enough ({shown} < {params.match_threshold:.3f})",
                {"best_similarity": best, "match_threshold": params.match_threshold},
            ),
        )
        calibrated = calibrator is not None or any(p.head is not None for p in photos)
        return ListingScore(None, raw, "not_in_catalog", calibrated, photos, features, reasons)
    outside = sum(not p.in_catalog for p in photos)
    if outside:
        reasons.append(
            Reason(
                "photos_not_in_catalog", f"{outside} of {len(photos)} photos matched nothing in the catalog", {"count": outside}
            )
        )
    if features["spread"] >= 0.5:
        reasons.append(
            Reason(
                "photos_disagree",
                f"the photos point different ways (fake votes differ by {features['spread']:.2f})",
                {"spread": round(features["spread"], 6)},
            )
        )
    head = next((p.head for p in photos if p.head_probability is not None), None)
    if calibrator is not None:
        risk = calibrator.probability(features)
        high, low = calibrator.likely_counterfeit, calibrator.likely_authentic
    elif head is not None:
        risk, high, low = features["head_probability"], head.likely_counterfeit, head.likely_authentic
    else:
        risk, high, low = features["score"], params.counterfeit_threshold, params.authentic_threshold
        if head_missing:
            reasons.append(
                Reason("no_authenticity_head", f"no authenticity head: {head_missing}; risk falls back to the kNN vote")
            )
        reasons.append(Reason("uncalibrated", "risk is the raw fake vote, not a calibrated probability (run calibrate)"))
    calibrated = calibrator is not None or head is not None
    if risk >= high:
        verdict: Verdict = "likely_counterfeit"
    elif risk <= low and features["near_dup_authentic"] == 0:
        verdict = "likely_authentic"
    else:
        verdict = "needs_review"
    reasons.append(
        Reason(
            "risk_band",
            f"risk {risk:.3f} against bands: authentic at most {_band(low)}, counterfeit at least {_band(high)}",
            {"risk": round(risk, 6), "likely_authentic_at_most": low, "likely_counterfeit_at_least": high},
        )
    )
    return ListingScore(risk, raw, verdict, calibrated, photos, features, reasons)


def _band(threshold: float) -> str:
    # A calibrator that cannot meet its target sets a band outside [0, 1]: that verdict is never given.
    return f"{threshold:.3f}" if 0.0 <= threshold <= 1.0 else "never"


def _photo_reasons(photos: Sequence[PhotoScore]) -> list[Reason]:
    reasons: list[Reason] = []
    for number, photo in enumerate(photos, start=1):
        if photo.top is None:
            continue
        top = photo.top
        reasons.append(
            Reason(
                "nearest_reference",
                f"photo {number}: closest reference is {top.label} {top.brand}/{top.product} ({top.similarity:.3f})",
                {"photo": number, "image_id": top.image_id, "label": top.label, "similarity": round(top.similarity, 6)},
            )
        )
        if (head := photo.head) is not None and photo.in_catalog:
            reasons.append(
                Reason(
                    "authenticity_head",
                    f"photo {number}: the {head.scope} authenticity head gives P(counterfeit) {head.probability:.2f} "
                    f"(learned from {head.n_authentic} authentic and {head.n_counterfeit} counterfeit photos; "
                    f"ROC-AUC {head.cv_roc_auc:.2f} on photo shoots it was not fitted on)",
                    {
                        "photo": number,
                        "probability": round(head.probability, 6),
                        "scope": head.scope,
                        "brand": head.brand,
                        "head_version": head.version,
                        "n_authentic": head.n_authentic,
                        "n_counterfeit": head.n_counterfeit,
                        "cv_roc_auc": round(head.cv_roc_auc, 4),
                    },
                )
            )
        if photo.score is not None:
            reasons.append(
                Reason(
                    "fake_vote",
                    f"photo {number}: similarity-weighted share of known fakes among its matches {photo.score:.2f}; "
                    f"same-product margin fake - authentic {photo.margin:+.3f}",
                    {
                        "photo": number,
                        "vote": round(photo.score, 6),
                        "margin": round(photo.margin or 0.0, 6),
                        "nearest_counterfeit": photo.nearest_counterfeit,
                        "nearest_authentic": photo.nearest_authentic,
                    },
                )
            )
        if (dup := photo.near_dup_fake) is not None:
            reasons.append(
                Reason(
                    "near_duplicate_of_known_fake",
                    f"photo {number} is a near copy of known-fake photo {dup.image_id} ({dup.distance} bits apart)",
                    {"photo": number, "image_id": dup.image_id, "distance": dup.distance},
                )
            )
        if (dup := photo.near_dup_authentic) is not None:
            reasons.append(
                Reason(
                    "reused_official_photo",
                    f"photo {number} is a near copy of the brand's own photo {dup.image_id}: "
                    f"listings that reuse official imagery need a look",
                    {"photo": number, "image_id": dup.image_id, "distance": dup.distance},
                )
            )
    return reasons


def photo_risk(photo: PhotoScore, calibrator: Calibrator | None = None) -> float | None:
    """One photo's risk on the listing scale: the photo scored as a one-photo listing."""
    if not photo.in_catalog or photo.score is None:
        return None
    if calibrator is not None:
        return calibrator.probability(listing_features([photo]))
    head = photo.head_probability
    return head if head is not None else photo.score


def rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def photo_figures(photo: PhotoScore, calibrator: Calibrator | None) -> dict[str, Any]:
    """One photo's figures as a scan result shows them (a brand's view computes them again from part of the evidence)."""
    return {
        "risk": rounded(photo_risk(photo, calibrator)),
        "score": rounded(photo.score),
        "head_probability": rounded(photo.head.probability if photo.head is not None else None),
        "in_catalog": photo.in_catalog,
        "nearest_authentic": rounded(photo.nearest_authentic),
        "nearest_counterfeit": rounded(photo.nearest_counterfeit),
        "margin": rounded(photo.margin),
    }


def photo_result(photo: PhotoScore, evidence: PhotoEvidence, calibrator: Calibrator | None) -> dict[str, Any]:
    """One photo's figures and evidence as a scan result shows them (its `sha256` is the caller's)."""
    return {
        **photo_figures(photo, calibrator),
        "near_duplicates": [d.as_dict() for d in photo.near_duplicates],
        "matches": [m.as_dict() for m in evidence.matches],
    }
