"""The model a scan runs on, as one immutable value, and the slot that holds the one serving now.

A scan takes the slot's value once (`ModelSlot.model`) and uses nothing else: a model switch, an index rebuild or a
calibrator refresh meanwhile replaces the value as a whole, so a scan never mixes the embedder of one model with the
index or calibrator of another. Replacements happen under the service's write lock (the one lock every catalog and
index write takes); reading needs no lock, an attribute read being atomic.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Any

from embeddings import ImageEmbedder, VectorIndex
from embeddings.authenticity import HeadSet
from service.config import Settings
from service.models.calibration import LoadedCalibrator
from service.scanning.scoring import ScoringParams

DEFAULT_MATCH_THRESHOLD = 0.5


@dataclass(frozen=True)
class ServingModel:
    """The model a scan runs on, with its index, calibrator, scoring parameters and authenticity heads."""

    embedder: ImageEmbedder
    index: VectorIndex
    calibrator: LoadedCalibrator | None
    scoring: ScoringParams
    heads: HeadSet | None = None


def scoring_for(settings: Settings, embedder: ImageEmbedder) -> ScoringParams:
    """The scoring parameters for `embedder`: the settings', with the model's own match threshold unless one is set."""
    threshold = settings.scoring.match_threshold
    if threshold is None:
        threshold = embedder.default_match_threshold or DEFAULT_MATCH_THRESHOLD
    return ScoringParams(
        match_threshold=threshold,
        counterfeit_threshold=settings.scoring.counterfeit_threshold,
        authentic_threshold=settings.scoring.authentic_threshold,
        vote_temperature=settings.scoring.vote_temperature,
    )


class ModelSlot:
    """Holds the serving `ServingModel`; `lock` is the service's write lock, under which every replacement happens."""

    def __init__(self, model: ServingModel, lock: threading.RLock) -> None:
        self.model = model
        self.lock = lock

    def put(self, model: ServingModel) -> None:
        with self.lock:
            self.model = model

    def update(self, **changes: Any) -> None:
        """Replace some parts of the serving model (its index, calibrator or heads) in one assignment."""
        with self.lock:
            self.model = replace(self.model, **changes)

    def update_if_serving(self, embedder: ImageEmbedder, **changes: Any) -> bool:
        """`update`, unless another model has been switched in since `embedder` was read (the change is for it)."""
        with self.lock:
            if self.model.embedder is not embedder:
                return False
            self.model = replace(self.model, **changes)
            return True
