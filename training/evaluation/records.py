"""One evaluated listing: its truth, what the scorer said about it, and the evidence it showed."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Final

AUTHENTIC: Final = "authentic"
COUNTERFEIT: Final = "counterfeit"
UNRELATED: Final = "unrelated"
TRUTHS: Final = (AUTHENTIC, COUNTERFEIT, UNRELATED)

LIKELY_COUNTERFEIT: Final = "likely_counterfeit"
NEEDS_REVIEW: Final = "needs_review"
LIKELY_AUTHENTIC: Final = "likely_authentic"
NOT_IN_CATALOG: Final = "not_in_catalog"
VERDICTS: Final = (LIKELY_COUNTERFEIT, NEEDS_REVIEW, LIKELY_AUTHENTIC, NOT_IN_CATALOG)


@dataclass(frozen=True)
class EvalRecord:
    """A query listing scanned against the catalog, with its ground truth.

    `score` is the raw ranking score in [0, 1] (higher = more likely fake) and is always present; `risk` is what the
    service answered (a calibrated probability when `calibrated`) and is None for `not_in_catalog`. `matches` are the
    best photo's matches, best first (`image_id, brand, product, label, similarity`); `reasons` are the service's
    machine-readable reasons (`code, message, ...`). `group` optionally names a cluster of near-identical queries
    (e.g. photos of one physical item): the bootstrap then resamples whole groups, so intervals are not too narrow.
    """

    listing: str
    photos: list[str]
    truth: str
    brand: str | None
    product: str | None
    score: float
    risk: float | None
    calibrated: bool
    verdict: str
    matches: list[dict[str, Any]] = field(default_factory=list)
    reasons: list[dict[str, Any]] = field(default_factory=list)
    group: str | None = None

    def __post_init__(self) -> None:
        if self.truth not in TRUTHS:
            raise ValueError(f"listing {self.listing}: truth must be one of {', '.join(TRUTHS)}, not {self.truth!r}")
        if self.verdict not in VERDICTS:
            raise ValueError(f"listing {self.listing}: verdict must be one of {', '.join(VERDICTS)}, not {self.verdict!r}")
        if not math.isfinite(self.score):
            raise ValueError(f"listing {self.listing}: score must be a finite number, not {self.score!r}")
