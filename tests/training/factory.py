"""Building evaluation records for the tests with only the fields a test cares about."""

from __future__ import annotations

from typing import Any

from training.evaluation import EvalRecord

_counter = iter(range(1_000_000))


def record(
    truth: str,
    score: float,
    *,
    verdict: str = "needs_review",
    risk: float | None = None,
    brand: str | None = "Nike",
    product: str | None = "air-force-1",
    matches: list[dict[str, Any]] | None = None,
    reasons: list[dict[str, Any]] | None = None,
    photos: list[str] | None = None,
    group: str | None = None,
    calibrated: bool = False,
) -> EvalRecord:
    """An evaluation record; the risk defaults to the score unless the verdict is not_in_catalog."""
    unrelated = truth == "unrelated"
    if risk is None and verdict != "not_in_catalog":
        risk = score
    return EvalRecord(
        listing=f"line {next(_counter)}",
        photos=photos if photos is not None else ["missing.jpg"],
        truth=truth,
        brand=None if unrelated else brand,
        product=None if unrelated else product,
        score=score,
        risk=risk,
        calibrated=calibrated,
        verdict=verdict,
        matches=matches if matches is not None else [],
        reasons=reasons if reasons is not None else [],
        group=group,
    )


def match(
    product: str, *, brand: str = "Nike", label: str = "authentic", similarity: float = 0.9, image_id: str = ""
) -> dict[str, Any]:
    """One evidence match as the service reports it."""
    return {
        "image_id": image_id or f"img-{product}",
        "brand": brand,
        "product": product,
        "label": label,
        "similarity": similarity,
    }
