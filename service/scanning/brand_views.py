"""A brand's view of a scan: the evidence from its own catalogs only, and every figure computed again from that
evidence (or withheld), so that what a brand sees never rests on what another brand's catalog holds. The API, the
console and the scan recorder (which stores each brand's verdict of a scan that concerns several) share it.

A view is another `ScanResult` (service/scanning/result.py), made from the scan's with `model_copy`: the stored result
itself is never changed.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import TypeAdapter

from service.scanning.result import ImageResultOut, ReasonOut, ScanResult
from service.scanning.scoring import (
    Calibrator,
    HeadOpinion,
    Match,
    NearDuplicate,
    PhotoEvidence,
    ScoringParams,
    photo_figures,
    rounded,
    score_listing,
)

if TYPE_CHECKING:
    from service.models.snapshot import ServingModel

KEPT_REASONS = ("random_model_weights", "empty_scope")  # reasons that rest on no evidence: they stay in every view
PHOTO_NUMBERS = ("risk", "score", "head_probability", "nearest_authentic", "nearest_counterfeit", "margin")
REASONS = TypeAdapter(list[ReasonOut])  # a listing's reasons validated in one call


@dataclass(frozen=True)
class ViewScoring:
    """What re-scoring a stored scan from part of its evidence needs, from the model serving now: its scoring
    parameters, its calibrator (only when it is the one that scored the scan) and its authenticity heads' bands."""

    params: ScoringParams
    calibrator: Calibrator | None = None
    head_version: str | None = None
    head_bands: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # brand -> (likely_counterfeit, likely_authentic)

    def head(self, reason: ReasonOut) -> HeadOpinion | None:
        """A stored `authenticity_head` reason back as the head's opinion, while that head still serves."""
        bands = self.head_bands.get(str(reason.value("brand")))
        if bands is None or reason.value("head_version") != self.head_version:
            return None
        return HeadOpinion(
            float(reason.value("probability")), str(reason.value("brand")), str(reason.value("scope")),
            str(reason.value("head_version")), int(reason.value("n_authentic")), int(reason.value("n_counterfeit")),
            float(reason.value("cv_roc_auc")), *bands,
        )  # fmt: skip


def stored_evidence(image: ImageResultOut, head: HeadOpinion | None = None) -> PhotoEvidence:
    """A scan photo's evidence back as PhotoEvidence: its `matches` and `near_duplicates` as the result lists them."""
    matches = [Match(m.image_id, m.brand, m.product, m.label, m.similarity) for m in image.matches]
    duplicates = [NearDuplicate(d.image_id, d.brand, d.product, d.label, d.distance) for d in image.near_duplicates]
    return PhotoEvidence(matches, duplicates, head)


def rescore_stored(result: ScanResult, evidence: Sequence[PhotoEvidence], view: ViewScoring) -> ScanResult:
    """A scan result with its figures, verdict and reasons computed again from `evidence` alone (one per photo, part
    of what the scan found): with `score_listing`, as the scan itself was scored."""
    score = score_listing(evidence, view.params, view.calibrator)
    kept = [r for r in result.reasons if r.code in KEPT_REASONS]
    images = [
        image.model_copy(update=photo_figures(photo, view.calibrator))
        for image, photo in zip(result.images, score.photos, strict=True)
    ]
    return result.model_copy(
        update={
            "risk": rounded(score.risk),
            "score": rounded(score.score),
            "verdict": score.verdict,
            "calibrated": score.calibrated,
            "calibration": result.calibration if view.calibrator is not None else None,
            "features": {name: round(value, 6) for name, value in score.features.items()},
            "images": images,
            "reasons": kept + REASONS.validate_python([reason.as_dict() for reason in score.reasons]),
        }
    )


def view_scoring(model: ServingModel, record: ScanResult) -> ViewScoring:
    """How to score a stored scan again for a brand's view: the serving model's parameters and heads, and its
    calibrator only when that calibrator scored the scan."""
    calibrator = model.calibrator
    if calibrator is not None and (record.calibration is None or record.calibration.model_dump() != calibrator.summary()):
        calibrator = None
    heads = model.heads
    if heads is None:
        return ViewScoring(model.scoring, calibrator)
    bands = {brand: (head.likely_counterfeit, head.likely_authentic) for brand, head in heads.heads.items()}
    return ViewScoring(model.scoring, calibrator, heads.version, bands)


def brand_view(result: ScanResult, mine: Collection[str], view: ViewScoring | None = None) -> ScanResult:
    """What brands `mine` may see of a scan: evidence from their catalogs only, and the figures computed from it.

    Where another brand's evidence (a match, a near copy, its authenticity head's opinion) is removed, every figure that
    rested on it goes too: the photos' and the listing's risk, scores, features, verdict and reasons are scored again
    from the evidence left, with `view` (the serving model's scoring), or withheld without it. The result is unchanged.
    """
    images: list[ImageResultOut] = []
    hidden = False
    for image in result.images:
        matches = [m for m in image.matches if m.brand in mine]
        duplicates = [d for d in image.near_duplicates if d.brand in mine]
        hidden = hidden or len(matches) < len(image.matches) or len(duplicates) < len(image.near_duplicates)
        images.append(image.model_copy(update={"matches": matches, "near_duplicates": duplicates}))
    # Another brand's authenticity head says what that brand's catalog holds: its opinion goes with its evidence.
    heads = {int(r.value("photo")): r for r in result.reasons if r.code == "authenticity_head"}
    hidden = hidden or any(r.value("brand") not in mine for r in heads.values())
    summary = result.authenticity_head
    if summary:  # which brands and products have heads: its own only
        summary = summary.model_copy(update={"scopes": [s for s in summary.scopes if s.split("/", 1)[0] in mine]})
    redacted = result.model_copy(update={"images": images, "authenticity_head": summary})
    if not hidden:
        return redacted
    note = ReasonOut(
        code="other_brands_evidence_removed",
        message="figures computed from your brands' evidence only: what other brands' catalogs hold is neither shown "
        "nor counted" + ("" if view is not None else "; the listing's figures are withheld"),
    )
    if view is None:
        withheld = {**dict.fromkeys(PHOTO_NUMBERS), "in_catalog": False}
        kept = [r for r in result.reasons if r.code in KEPT_REASONS]
        return redacted.model_copy(
            update={"risk": None, "score": None, "verdict": "needs_review", "calibrated": False, "calibration": None,
                    "features": {}, "images": [image.model_copy(update=withheld) for image in images],
                    "reasons": [*kept, note]}
        )  # fmt: skip
    evidence = [
        stored_evidence(image, view.head(heads[n]) if n in heads and heads[n].value("brand") in mine else None)
        for n, image in enumerate(images, start=1)
    ]
    rescored = rescore_stored(redacted, evidence, view)
    return rescored.model_copy(update={"reasons": [note, *rescored.reasons]})
