"""Keeps the serving model's authenticity heads (`embeddings/authenticity.py`): fitted on every labelled photo the
deployment has (the catalog's authentic photos and known fakes, plus the labelled photos an activated `train` output
carries), saved per model, and refitted in the background once catalog changes settle.

Debounced: a fit starts when the catalog has been quiet for `head_refit_delay_s`, or `head_refit_max_delay_s` after
the first change it has not seen, so that an import of 10,000 photos fits once, not 10,000 times.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from embeddings import ImageEmbedder
from embeddings.authenticity import HeadSet, LabelledPhotos, fit_heads
from reference_catalog import CatalogRepository, ImageRef
from service.config import Settings
from service.scanning.scoring import HeadOpinion, PhotoEvidence

log = logging.getLogger(__name__)


class HeadKeeper:
    def __init__(self, settings: Settings, catalog: CatalogRepository) -> None:
        self.settings = settings
        self.catalog = catalog
        self.directory = settings.storage.data_dir / "heads"
        self.fits = 0  # fits made by this process (the debounce test counts them)
        self._seen_revision: int | None = None
        self._last_change = 0.0
        self._pending_since: float | None = None
        self._failed_revision: int | None = None

    @property
    def enabled(self) -> bool:
        return self.settings.heads.enabled

    def path_for(self, embedder: ImageEmbedder) -> Path:
        """One file per model and set of extra photos: a `train` output with the base model's weights has its own."""
        extra = embedder.head_photos
        tag = "catalog" if extra is None else "extra-" + hashlib.sha256(extra.digest().encode()).hexdigest()[:12]
        return self.directory / f"{embedder.info.fingerprint[:16]}-{tag}.npz"

    def load(self, embedder: ImageEmbedder) -> HeadSet | None:
        """The saved heads of this model and detail layout (fitted at whatever catalog revision they name), or None."""
        path = self.path_for(embedder)
        if not self.enabled or not path.is_file():
            return None
        try:
            heads = HeadSet.load(path)
        except ValueError as exc:
            log.warning("refitting the authenticity heads: %s", exc)
            return None
        usable = heads.layout == embedder.detail_layout and heads.fingerprint == embedder.info.fingerprint
        return heads if usable else None

    def training_set(self, embedder: ImageEmbedder, refs: Mapping[int, ImageRef]) -> tuple[LabelledPhotos, int]:
        """The catalog's labelled photos with stored detail features and the model's extra photos; how many are extra."""
        keys, features = self.catalog.stored_details(embedder.info.fingerprint, embedder.detail_layout, embedder.detail_dim)
        keep = np.isin(keys, np.fromiter(refs, dtype=np.int64, count=len(refs)))
        keys, features = keys[keep], features[keep]
        groups = self.catalog.shoot_groups()
        chosen = [refs[int(k)] for k in keys]
        catalog = LabelledPhotos(
            features,
            np.array([ref.label == "counterfeit" for ref in chosen], dtype=bool),
            tuple(groups.get(ref.key) or f"image:{ref.image_id}" for ref in chosen),  # no shoot: its own group
            tuple(ref.brand for ref in chosen),
            tuple(ref.product for ref in chosen),
            embedder.detail_layout,
        )
        extra = embedder.head_photos
        if extra is None:
            return catalog, 0
        if extra.layout != catalog.layout or extra.features.shape[1] != catalog.features.shape[1]:
            hint = "run `counterfeit-scan train` again with this release"
            log.warning("the model's %d labelled training photos have detail features of layout %s, not %s: left out (%s)",
                        len(extra), extra.layout, catalog.layout, hint)  # fmt: skip
            return catalog, 0
        return catalog + extra, len(extra)

    def fit(self, embedder: ImageEmbedder, refs: Mapping[int, ImageRef], revision: int) -> HeadSet:
        """Fit and save the heads for the catalog at `revision` (`refs`); the file is replaced atomically."""
        started = time.perf_counter()
        photos, extra = self.training_set(embedder, refs)
        try:
            heads = fit_heads(
                photos,
                self.settings.head_options(),
                fingerprint=embedder.info.fingerprint,
                catalog_revision=revision,
                n_extra_photos=extra,
            )
        except Exception:
            self._failed_revision = revision  # not again until the catalog changes
            raise
        heads.save(self.path_for(embedder))
        self.fits += 1
        scopes = {brand: round(head.cv_roc_auc, 3) for brand, head in heads.heads.items()}
        log.info("authenticity heads %s fitted on %d photos in %.1f s (out-of-fold ROC-AUC %s; skipped %s)",
                 heads.version, len(photos), time.perf_counter() - started, scopes, heads.skipped or "none")  # fmt: skip
        return heads

    def due(self, revision: int, heads: HeadSet | None) -> bool:
        """Whether a background refit should start now (see the module docstring)."""
        if not self.enabled or (heads is not None and heads.catalog_revision == revision) or revision == self._failed_revision:
            self._pending_since = None
            return False
        now = time.monotonic()
        if revision != self._seen_revision:
            self._seen_revision, self._last_change = revision, now
            self._pending_since = self._pending_since or now
        pending = self._pending_since or now
        quiet = now - self._last_change >= self.settings.heads.refit_delay_s
        return quiet or now - pending >= self.settings.heads.refit_max_delay_s

    def missing_reason(
        self, heads: HeadSet | None, revision: int, evidence: Sequence[PhotoEvidence], brand: str | None
    ) -> str | None:
        """Why a listing's photos have no head's opinion (None when one has it); `revision`: the catalog's now."""
        if any(e.head is not None for e in evidence):
            return None
        if not self.enabled:
            return "turned off (COUNTERFEIT_SCAN_HEAD_ENABLED)"
        if heads is None:
            return "not fitted yet for this model"
        brands = [brand] if brand else [e.matches[0].brand for e in evidence if e.matches]
        reasons = [f"{b}: {heads.skipped[b]}" for b in dict.fromkeys(brands) if b in heads.skipped]
        if reasons:
            return "; ".join(reasons)
        fitted = heads.catalog_revision
        if fitted != revision:  # a brand new to the heads: they are refitted once the catalog's changes settle
            return f"the heads are being refitted for the catalog's latest changes (fitted at revision {fitted}, now {revision})"
        return "no head covers these photos"


def head_opinion(heads: HeadSet | None, details: np.ndarray, brand: str | None, product: str | None) -> HeadOpinion | None:
    """The probability the brand's head gives the photo (with its product's own weights where it has them)."""
    head = heads.head_for(brand) if heads is not None and brand else None
    if heads is None or head is None:
        return None
    probability = float(head.probability(details[None, :], product)[0])
    return HeadOpinion(probability, head.brand, head.scope(product), heads.version, head.n_authentic, head.n_counterfeit,
                       head.cv_roc_auc, head.likely_counterfeit, head.likely_authentic)  # fmt: skip
