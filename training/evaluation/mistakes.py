"""The most confident errors of an evaluation, for the report and for error analysis."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain, zip_longest
from typing import NamedTuple

from training.evaluation.records import (
    AUTHENTIC,
    COUNTERFEIT,
    LIKELY_AUTHENTIC,
    LIKELY_COUNTERFEIT,
    NOT_IN_CATALOG,
    UNRELATED,
    EvalRecord,
)

KIND_TITLES = {
    "authentic_scored_high": "authentic listing scored as a likely fake",
    "counterfeit_scored_low": "counterfeit listing scored as likely authentic",
    "unrelated_matched": "unrelated photo matched the catalog",
}


class Mistake(NamedTuple):
    """An error: its kind (a key of KIND_TITLES), whether the verdict itself was wrong, and how confident it was."""

    record: EvalRecord
    kind: str
    wrong_verdict: bool
    confidence: float


def worst_mistakes(records: Sequence[EvalRecord], n: int = 12) -> list[Mistake]:
    """Up to `n` of the most confident errors, taken in turn from each kind so that no kind crowds out the others.

    Authentic rows not cleared (`likely_counterfeit` or `needs_review`) rank by score, highest first; counterfeit rows
    not flagged rank by score, lowest first; unrelated rows not answered `not_in_catalog` rank by their top match's
    similarity. Within a kind, wrong verdicts (a flagged authentic, a cleared fake) come before deferred ones.
    """
    kinds: dict[str, list[Mistake]] = {kind: [] for kind in KIND_TITLES}
    for record in records:
        mistake = _mistake(record)
        if mistake is not None:
            kinds[mistake.kind].append(mistake)
    ranked = [sorted(found, key=lambda m: (m.wrong_verdict, m.confidence), reverse=True) for found in kinds.values()]
    interleaved = [m for m in chain.from_iterable(zip_longest(*ranked)) if m is not None]
    return interleaved[: max(n, 0)]


def _mistake(record: EvalRecord) -> Mistake | None:
    if record.truth == AUTHENTIC and record.verdict not in (LIKELY_AUTHENTIC, NOT_IN_CATALOG):
        return Mistake(record, "authentic_scored_high", record.verdict == LIKELY_COUNTERFEIT, record.score)
    if record.truth == COUNTERFEIT and record.verdict != LIKELY_COUNTERFEIT:
        return Mistake(record, "counterfeit_scored_low", record.verdict == LIKELY_AUTHENTIC, 1.0 - record.score)
    if record.truth == UNRELATED and record.verdict != NOT_IN_CATALOG:
        top = float(record.matches[0].get("similarity", 0.0)) if record.matches else 0.0
        return Mistake(record, "unrelated_matched", True, top)
    return None
