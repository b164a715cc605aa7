"""Scoring: kNN hits and near-duplicates to features, a risk, a verdict and reason codes."""

from __future__ import annotations

import math

import pytest

from service.scanning.scoring import (
    FEATURES,
    Match,
    NearDuplicate,
    PhotoEvidence,
    ScoringParams,
    listing_features,
    photo_risk,
    score_listing,
    score_photo,
)

PARAMS = ScoringParams(match_threshold=0.5, counterfeit_threshold=0.8, authentic_threshold=0.2, vote_temperature=0.05)


def m(label: str, similarity: float, product: str = "runner") -> Match:
    return Match(f"ref_{label}_{similarity}", "Acme", product, label, similarity)


def ev(*matches: Match, dups: tuple[NearDuplicate, ...] = ()) -> PhotoEvidence:
    return PhotoEvidence(list(matches), dups)


def codes(score: object) -> list[str]:
    return [r.code for r in score.reasons]  # type: ignore[attr-defined]


class FixedCalibrator:
    """A calibrator with known behaviour: P = score squared, bands 0.1 / 0.9."""

    likely_counterfeit = 0.9
    likely_authentic = 0.1

    def probability(self, features: dict[str, float]) -> float:
        return features["score"] ** 2


def test_no_matches_at_all() -> None:
    score = score_listing([ev()], PARAMS)
    assert (score.risk, score.score, score.verdict) == (None, None, "not_in_catalog")
    assert score.reasons[0].code == "not_in_catalog"
    assert "no reference images to compare with" in score.reasons[0].message


def test_matches_below_the_threshold_are_not_in_catalog_but_still_scored() -> None:
    score = score_listing([ev(m("counterfeit", 0.49), m("authentic", 0.3))], PARAMS)
    assert (score.risk, score.verdict) == (None, "not_in_catalog")
    assert score.reasons[0].as_dict()["best_similarity"] == 0.49
    assert "best similarity 0.490 < 0.500" in score.reasons[0].message
    assert score.score is not None and score.score > 0.9  # the raw score exists for evaluation
    photo = score.photos[0]
    assert photo.in_catalog is False
    assert (photo.nearest_counterfeit, photo.nearest_authentic) == (0.49, 0.3)


def test_only_fakes_close_is_likely_counterfeit() -> None:
    score = score_listing([ev(m("counterfeit", 0.95), m("counterfeit", 0.9))], PARAMS)
    assert (score.risk, score.verdict, score.calibrated) == (1.0, "likely_counterfeit", False)
    assert "uncalibrated" in codes(score)
    nearest = score.reasons[0].as_dict()
    assert (nearest["code"], nearest["label"], nearest["similarity"]) == ("nearest_reference", "counterfeit", 0.95)


def test_only_authentic_close_is_likely_authentic() -> None:
    score = score_listing([ev(m("authentic", 0.95), m("authentic", 0.7))], PARAMS)
    assert (score.risk, score.verdict) == (0.0, "likely_authentic")


def test_vote_is_weighted_by_similarity() -> None:
    photo = score_photo(ev(m("authentic", 0.9), m("counterfeit", 0.8)), PARAMS)
    expected = math.exp(-0.1 / 0.05) / (1 + math.exp(-0.1 / 0.05))
    assert photo.score == pytest.approx(expected)


def test_margin_is_between_same_product_fake_and_authentic() -> None:
    photo = score_photo(ev(m("counterfeit", 0.9), m("authentic", 0.7), m("authentic", 0.85, product="other")), PARAMS)
    assert photo.margin == pytest.approx(0.2)  # 0.85 belongs to another product and does not count
    # With no authentic of that product among the matches, the last similarity bounds it from above.
    lone = score_photo(ev(m("counterfeit", 0.9), m("counterfeit", 0.6, product="other")), PARAMS)
    assert lone.margin == pytest.approx(0.3)


def test_mixed_evidence_needs_review() -> None:
    score = score_listing([ev(m("authentic", 0.9), m("counterfeit", 0.9))], PARAMS)
    assert score.risk == pytest.approx(0.5)
    assert score.verdict == "needs_review"


def test_thresholds_are_inclusive() -> None:
    params = ScoringParams(0.5, counterfeit_threshold=1.0, authentic_threshold=0.0, vote_temperature=0.05)
    assert score_listing([ev(m("counterfeit", 0.9))], params).verdict == "likely_counterfeit"
    assert score_listing([ev(m("authentic", 0.9))], params).verdict == "likely_authentic"


def test_listing_features_and_disagreement() -> None:
    score = score_listing([ev(m("counterfeit", 0.9)), ev(m("authentic", 0.9)), ev(m("authentic", 0.3))], PARAMS)
    assert set(score.features) == set(FEATURES)
    assert score.features["score"] == pytest.approx(0.5)  # the photo outside the catalog does not count
    assert score.features["spread"] == pytest.approx(1.0)
    assert score.features["top_similarity"] == pytest.approx(0.9)
    assert {"photos_not_in_catalog", "photos_disagree"} <= set(codes(score))
    assert score.verdict == "needs_review"


def test_near_copy_of_a_known_fake_is_strong_evidence() -> None:
    dup = NearDuplicate("ref_fake", "Acme", "runner", "counterfeit", 3)
    score = score_listing([ev(m("authentic", 0.9), m("counterfeit", 0.6), dups=(dup,))], PARAMS)
    assert score.features["near_dup_fake"] == 1.0
    assert score.risk is not None and score.risk >= 0.95
    assert score.verdict == "likely_counterfeit"
    reason = next(r.as_dict() for r in score.reasons if r.code == "near_duplicate_of_known_fake")
    assert (reason["image_id"], reason["distance"]) == ("ref_fake", 3)


def test_reused_official_photo_is_never_likely_authentic() -> None:
    dup = NearDuplicate("ref_official", "Acme", "runner", "authentic", 0)
    score = score_listing([ev(m("authentic", 0.99), dups=(dup,))], PARAMS)
    assert score.risk == 0.0
    assert score.verdict == "needs_review"
    assert "reused_official_photo" in codes(score)


def test_calibrator_replaces_risk_and_bands() -> None:
    calibrator = FixedCalibrator()
    score = score_listing([ev(m("counterfeit", 0.9), m("authentic", 0.9))], PARAMS, calibrator)
    assert score.calibrated is True
    assert score.risk == pytest.approx(0.25) and score.score == pytest.approx(0.5)
    assert score.verdict == "needs_review"
    assert "uncalibrated" not in codes(score)
    photo = score.photos[0]
    assert photo_risk(photo, calibrator) == pytest.approx(0.25)
    assert photo_risk(photo) == pytest.approx(0.5)
    fake = score_listing([ev(m("counterfeit", 0.9))], PARAMS, calibrator)
    assert (fake.risk, fake.verdict) == (1.0, "likely_counterfeit")


def test_features_of_no_photos_are_zero() -> None:
    assert listing_features([]) == dict.fromkeys(FEATURES, 0.0)
