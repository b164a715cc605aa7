"""Which model serves, and keeping its calibrator and authenticity heads current: the slow work (loading a model,
embedding the catalog, fitting heads) runs off the write lock, and only the swap of the finished `ServingModel`
(service/models/snapshot.py) takes it.

A model switch (service/models/switch.py for a running service, `counterfeit-scan model activate` offline) is
`prepare` (load the model and build its index beside the serving one) then `activate` (catch up with the catalog
writes made meanwhile, and swap). The calibrator (`counterfeit-scan calibrate`'s file for this model) and the heads
(service/models/authenticity_heads.py) are reloaded or refitted by the service's background threads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from embeddings import ImageEmbedder, ModelSpec, load_embedder
from embeddings.authenticity import HeadSet
from reference_catalog import CatalogRepository, ImageRef
from service.catalog.index_keeper import EMBED_CHUNK, IndexKeeper
from service.config import Settings
from service.models.authenticity_heads import HeadKeeper
from service.models.calibration import CalibratorError, LoadedCalibrator, calibrator_path, load_calibrator
from service.models.registry import ModelRegistry
from service.models.snapshot import ModelSlot, ServingModel, scoring_for
from service.scanning.scoring import FEATURES

log = logging.getLogger(__name__)


def serving_spec(settings: Settings) -> ModelSpec:
    """The model a data directory serves: the activated one if any (model activate/rollback), else the settings'."""
    active = ModelRegistry(settings.storage.data_dir).active()
    return active.spec(settings.model_spec()) if active else settings.model_spec()


@dataclass(eq=False)
class ServingModels:
    """Which model serves: its calibrator and authenticity heads kept current, and switches to another model."""

    settings: Settings
    catalog: CatalogRepository
    slot: ModelSlot
    index_keeper: IndexKeeper
    heads: HeadKeeper

    @property
    def current(self) -> ServingModel:
        """The model serving now: take it once per scan (see service/models/snapshot.py)."""
        return self.slot.model

    # --- calibration ------------------------------------------------------------------------------------------------
    def calibrator_path_for(self, fingerprint: str) -> Path:
        return calibrator_path(self.settings.storage.data_dir / "calibration", fingerprint)

    @property
    def calibrator_path(self) -> Path:
        return self.calibrator_path_for(self.current.embedder.info.fingerprint)

    def _load_calibrator(self, fingerprint: str) -> LoadedCalibrator | None:
        try:
            return load_calibrator(self.calibrator_path_for(fingerprint), fingerprint, FEATURES)
        except CalibratorError as exc:
            log.error("not using calibrator: %s", exc)
            return None

    def set_calibrator(self, calibrator: LoadedCalibrator | None) -> None:
        """Score with `calibrator` from now on (None: raw features; `calibrate` and `evaluate --uncalibrated`)."""
        self.slot.update(calibrator=calibrator)

    def refresh_calibrator(self) -> None:
        """Load (or reload, when the file changed) the calibrator fitted for this model."""
        model = self.current
        path = self.calibrator_path_for(model.embedder.info.fingerprint)
        current = model.calibrator
        if current is not None and path.is_file() and path.stat().st_mtime == current.mtime:
            return
        calibrator = self._load_calibrator(model.embedder.info.fingerprint)
        if calibrator is None and current is not None and path.is_file():
            return  # keep the one that works rather than a broken replacement
        self.slot.update_if_serving(model.embedder, calibrator=calibrator)
        if calibrator is not None and calibrator is not current:
            log.info("risk is calibrated (%s, fitted %s)", calibrator.spec["method"], calibrator.spec.get("fitted_at"))

    # --- models: prepare in the background, switch atomically -------------------------------------------------------
    def prepare(self, spec: ModelSpec, show_progress: bool = False) -> ServingModel:
        """Load a model and build its index from the catalog (stored vectors, embedding what is missing).

        Runs beside the serving model; `activate` then switches to it. Raises ModelLoadError.
        """
        keeper = self.index_keeper
        embedder = load_embedder(spec, self.settings.export_dir)
        index = keeper.load_saved(embedder) or keeper.new_index(embedder)
        with self.slot.lock:  # the refs and the serving index's revision agree (other replicas' writes may be ahead)
            revision, refs = self.slot.model.index.revision, keeper.refs_copy()
        keeper.repair(index, embedder, refs, revision, show_progress)
        index.refit()
        index.save(keeper.index_path_for(embedder.info.fingerprint))
        heads = self._heads_at(embedder, refs, revision)
        calibrator = self._load_calibrator(embedder.info.fingerprint)
        return ServingModel(embedder, index, calibrator, scoring_for(self.settings, embedder), heads)

    def activate(self, model: ServingModel) -> None:
        """Switch to a prepared model: catch up with catalog writes made meanwhile, then swap in one assignment."""
        keeper = self.index_keeper
        with self.slot.lock:
            keeper.repair(model.index, model.embedder, keeper.refs_copy(), self.slot.model.index.revision, False)
            keeper.save_if_dirty()
            self.slot.put(model)
            keeper.mark_dirty()
            keeper.save()
        log.info("now serving %s with index %s", model.embedder.info.short_id, model.index.version)

    # --- authenticity heads: fitted off the write lock, swapped in with one assignment -------------------------------
    def _heads_at(self, embedder: ImageEmbedder, refs: dict[int, ImageRef], revision: int, fit: bool = True) -> HeadSet | None:
        """Saved heads for this catalog revision, else fitted now (detail features embedded where missing); with
        `fit` False, the saved heads whatever revision they were fitted at (or None), leaving the fit to later."""
        if not self.heads.enabled:
            return None
        saved = self.heads.load(embedder)
        if saved is not None and (saved.catalog_revision == revision or not fit):
            return saved
        if not fit:
            return None
        self._fill_details(embedder, refs)
        return self.heads.fit(embedder, refs, revision)

    def refresh_heads(self, fit: bool = True) -> HeadSet | None:
        """Bring the serving model's heads up to the catalog it serves (at start, and in the background); with `fit`
        False, take the saved ones as they are (a service starting up: its background fitter catches up)."""
        model = self.current
        with self.slot.lock:
            refs, revision = self.index_keeper.refs_copy(), model.index.revision
        heads = self._heads_at(model.embedder, refs, revision, fit)
        self.slot.update_if_serving(model.embedder, heads=heads)
        return heads

    def refresh_heads_if_due(self) -> bool:
        """Refit the heads when the catalog has changed and settled (`HeadKeeper.due`); returns whether it did."""
        model = self.current
        if not self.heads.due(model.index.revision, model.heads):
            return False
        self.refresh_heads()
        return True

    def _fill_details(self, embedder: ImageEmbedder, refs: dict[int, ImageRef]) -> None:
        """Embed the catalog images that have no detail features for this model yet (catalogs made before them)."""
        keys, _ = self.catalog.stored_details(embedder.info.fingerprint, embedder.detail_layout, embedder.detail_dim)
        missing = sorted(set(refs) - set(keys.tolist()))
        if not missing:
            return
        log.info("computing detail features of %d catalog images with %s", len(missing), embedder.info.short_id)
        for start in range(0, len(missing), EMBED_CHUNK):
            chunk = [refs[k] for k in missing[start : start + EMBED_CHUNK]]
            images = [self.index_keeper.decode_stored(ref, embedder.input_size) for ref in chunk]
            out = embedder.embed_images_with_detail(images)
            self.catalog.store_details(embedder.info.fingerprint, embedder.detail_layout, [r.key for r in chunk], out.details)
