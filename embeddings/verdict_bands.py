"""Verdict bands: the probabilities at which a risk becomes likely_counterfeit or likely_authentic, chosen on
out-of-fold probabilities so that the flag keeps a target false-positive rate and the all-clear a target miss rate.

Shared by `counterfeit-scan calibrate` (training) and the authenticity head the service fits itself.
"""

from __future__ import annotations

from typing import Final

import numpy as np
from numpy.typing import ArrayLike

# Sentinels for a verdict the targets never allow: no probability is above 1 or below 0.
NEVER_FLAG: Final = float(np.nextafter(1.0, 2.0))
NEVER_CLEAR: Final = float(np.nextafter(0.0, -1.0))
_TOLERANCE: Final = 1e-12  # rates are ratios of counts; absorb the last-bit error of the division


def choose_thresholds(
    probabilities: ArrayLike, is_counterfeit: ArrayLike, target_fpr: float, target_miss_rate: float
) -> dict[str, float]:
    """Verdict thresholds meeting the targets on these rows (see `fit_calibrator`); `likely_authentic` < `likely_counterfeit`."""
    p = np.asarray(probabilities, dtype=float)
    y = np.asarray(is_counterfeit).astype(bool)
    authentic, fake = np.sort(p[~y]), np.sort(p[y])
    if authentic.size == 0 or fake.size == 0:
        raise ValueError("thresholds need both authentic and counterfeit rows")
    # Candidates are the observed probabilities: any threshold between two of them behaves like the next one up.
    candidates = np.unique(p)
    fpr = 1.0 - np.searchsorted(authentic, candidates, side="left") / authentic.size  # share of authentic with p >= t
    miss = np.searchsorted(fake, candidates, side="right") / fake.size  # share of fakes with p <= t
    flag_ok = candidates[fpr <= target_fpr + _TOLERANCE]
    clear_ok = candidates[miss <= target_miss_rate + _TOLERANCE]
    high = float(flag_ok[0]) if flag_ok.size else NEVER_FLAG
    low = float(clear_ok[-1]) if clear_ok.size else NEVER_CLEAR
    if low >= high:
        # Raising `high` only lowers the FPR and lowering `low` only lowers the miss rate, so meeting in the middle
        # keeps both targets and leaves no review band.
        middle = (low + high) / 2.0
        high, low = middle, float(np.nextafter(middle, -np.inf))
    return {"likely_counterfeit": high, "likely_authentic": low}
