"""The one place that turns kNN hits into a risk, a verdict and reasons. Calibration will replace `photo_risk`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

Verdict = Literal["likely_counterfeit", "needs_review", "likely_authentic", "not_in_catalog"]


@dataclass(frozen=True)
class Match:
    image_id: str
    brand: str
    product: str
    label: str
    similarity: float

    def as_dict(self) -> dict[str, object]:
        return {
            "image_id": self.image_id,
            "brand": self.brand,
            "product": self.product,
            "label": self.label,
            "similarity": round(self.similarity, 6),
        }


@dataclass(frozen=True)
class ScoringParams:
    match_threshold: float
    counterfeit_threshold: float
    authentic_threshold: float
    vote_temperature: float


@dataclass(frozen=True)
class PhotoScore:
    risk: float | None
    matches: Sequence[Match]
    nearest_authentic: float | None
    nearest_counterfeit: float | None
    vote: float | None

    @property
    def in_catalog(self) -> bool:
        return self.risk is not None


@dataclass(frozen=True)
class ListingScore:
    risk: float | None
    verdict: Verdict
    photos: Sequence[PhotoScore]
    reasons: list[str] = field(default_factory=list)


def _nearest(matches: Sequence[Match], label: str) -> float | None:
    sims = [m.similarity for m in matches if m.label == label]
    return max(sims) if sims else None


def score_photo(matches: Sequence[Match], params: ScoringParams) -> PhotoScore:
    """Risk of one photo: a similarity-weighted vote of known fakes among the matches above the threshold."""
    close = [m for m in matches if m.similarity >= params.match_threshold]
    authentic, counterfeit = _nearest(matches, "authentic"), _nearest(matches, "counterfeit")
    if not close:
        return PhotoScore(None, matches, authentic, counterfeit, None)
    top = max(m.similarity for m in close)
    weights = [math.exp((m.similarity - top) / params.vote_temperature) for m in close]
    vote = sum(w for w, m in zip(weights, close, strict=True) if m.label == "counterfeit") / sum(weights)
    return PhotoScore(vote, matches, authentic, counterfeit, vote)


def score_listing(photo_matches: Sequence[Sequence[Match]], params: ScoringParams) -> ListingScore:
    """Score a listing's photos; the listing's risk is the mean risk of the photos that matched the catalog."""
    photos = [score_photo(m, params) for m in photo_matches]
    matched = [p for p in photos if p.risk is not None]
    reasons: list[str] = []
    if not matched:
        best = max((m.similarity for p in photos for m in p.matches), default=None)
        detail = f"best similarity {best:.3f}" if best is not None else "no reference images to compare with"
        reasons.append(f"no photo resembles a reference image closely enough ({detail} < {params.match_threshold:.3f})")
        return ListingScore(None, "not_in_catalog", photos, reasons)
    risk = sum(p.risk for p in matched if p.risk is not None) / len(matched)
    for number, photo in enumerate(photos, start=1):
        reasons.append(_photo_reason(number, photo, params))
    if len(matched) < len(photos):
        reasons.append(f"{len(photos) - len(matched)} of {len(photos)} photos matched nothing in the catalog")
    if risk >= params.counterfeit_threshold:
        verdict: Verdict = "likely_counterfeit"
    elif risk <= params.authentic_threshold:
        verdict = "likely_authentic"
    else:
        verdict = "needs_review"
    return ListingScore(risk, verdict, photos, reasons)


def _photo_reason(number: int, photo: PhotoScore, params: ScoringParams) -> str:
    if photo.risk is None:
        return f"photo {number}: nothing in the catalog above similarity {params.match_threshold:.3f}"
    top = photo.matches[0]
    parts = [f"photo {number}: closest reference is {top.label} {top.brand}/{top.product} ({top.similarity:.3f})"]
    if photo.nearest_counterfeit is not None:
        parts.append(f"nearest known fake {photo.nearest_counterfeit:.3f}")
    if photo.nearest_authentic is not None:
        parts.append(f"nearest authentic {photo.nearest_authentic:.3f}")
    parts.append(f"weighted fake vote {photo.vote:.2f}")
    return ", ".join(parts)
