"""Scoring: kNN hits to a risk, a verdict and reasons."""

from __future__ import annotations

import math

import pytest

from service.scoring import Match, ScoringParams, score_listing, score_photo

PARAMS = ScoringParams(match_threshold=0.5, counterfeit_threshold=0.8, authentic_threshold=0.2, vote_temperature=0.05)


def m(label: str, similarity: float, product: str = "runner") -> Match:
    return Match(f"ref_{label}_{similarity}", "Acme", product, label, similarity)


def test_no_matches_at_all() -> None:
    score = score_listing([[]], PARAMS)
    assert (score.risk, score.verdict) == (None, "not_in_catalog")
    assert "no reference images to compare with" in score.reasons[0]


def test_matches_below_the_threshold_are_not_in_catalog() -> None:
    score = score_listing([[m("counterfeit", 0.49), m("authentic", 0.3)]], PARAMS)
    assert (score.risk, score.verdict) == (None, "not_in_catalog")
    assert "best similarity 0.490 < 0.500" in score.reasons[0]
    photo = score.photos[0]
    assert photo.in_catalog is False
    assert (photo.nearest_counterfeit, photo.nearest_authentic) == (0.49, 0.3)


def test_only_fakes_close_is_likely_counterfeit() -> None:
    score = score_listing([[m("counterfeit", 0.95), m("counterfeit", 0.9), m("authentic", 0.4)]], PARAMS)
    assert (score.risk, score.verdict) == (1.0, "likely_counterfeit")
    assert score.reasons[0].startswith("photo 1: closest reference is counterfeit Acme/runner (0.950)")
    assert "nearest authentic 0.400" in score.reasons[0]


def test_only_authentic_close_is_likely_authentic() -> None:
    score = score_listing([[m("authentic", 0.9), m("counterfeit", 0.45)]], PARAMS)
    assert (score.risk, score.verdict) == (0.0, "likely_authentic")


def test_vote_is_weighted_by_similarity() -> None:
    photo = score_photo([m("counterfeit", 0.9), m("authentic", 0.8)], PARAMS)
    expected = 1 / (1 + math.exp(-0.1 / 0.05))
    assert photo.risk == pytest.approx(expected)
    assert photo.vote == photo.risk
    # a softer temperature pulls the vote towards an even split
    soft = score_photo([m("counterfeit", 0.9), m("authentic", 0.8)], ScoringParams(0.5, 0.8, 0.2, 10.0))
    assert soft.risk is not None and 0.5 < soft.risk < expected


def test_mixed_evidence_needs_review() -> None:
    score = score_listing([[m("counterfeit", 0.9), m("authentic", 0.9)]], PARAMS)
    assert score.risk == pytest.approx(0.5)
    assert score.verdict == "needs_review"


def test_thresholds_are_inclusive() -> None:
    at_fake = ScoringParams(0.5, counterfeit_threshold=0.5, authentic_threshold=0.1, vote_temperature=0.05)
    assert score_listing([[m("counterfeit", 0.9), m("authentic", 0.9)]], at_fake).verdict == "likely_counterfeit"
    at_authentic = ScoringParams(0.5, counterfeit_threshold=0.9, authentic_threshold=0.5, vote_temperature=0.05)
    assert score_listing([[m("counterfeit", 0.9), m("authentic", 0.9)]], at_authentic).verdict == "likely_authentic"
    assert score_photo([m("counterfeit", 0.5)], PARAMS).risk == 1.0  # similarity exactly at the match threshold counts


def test_listing_risk_is_the_mean_of_matched_photos() -> None:
    score = score_listing(
        [[m("counterfeit", 0.9)], [m("authentic", 0.9)], [m("counterfeit", 0.1)]],
        PARAMS,
    )
    assert score.risk == pytest.approx(0.5)
    assert [p.in_catalog for p in score.photos] == [True, True, False]
    assert "photo 3: nothing in the catalog above similarity 0.500" in score.reasons
    assert "1 of 3 photos matched nothing in the catalog" in score.reasons


def test_match_as_dict_rounds_similarity() -> None:
    assert Match("ref_1", "Acme", "runner", "authentic", 0.123456789).as_dict() == {
        "image_id": "ref_1",
        "brand": "Acme",
        "product": "runner",
        "label": "authentic",
        "similarity": 0.123457,
    }
