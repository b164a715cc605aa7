"""Holds the engine while the app runs: loads it in the background and saves the index periodically."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from embeddings.batch_sizing import batch_ceiling, batch_rates, largest_fast_batch
from service.api.errors import ServiceNotReady
from service.config import Settings
from service.engine import ScanEngine
from service.imports.jobs import ImportJobs
from service.metrics import ServiceMetrics
from service.models.switch import ModelSwitcher
from service.scanning.batching import ScanBatcher

log = logging.getLogger(__name__)


class ServiceRuntime:
    def __init__(self, settings: Settings, engine: ScanEngine | None = None, metrics: ServiceMetrics | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = metrics
        self.error: str | None = None
        self.switcher = ModelSwitcher()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._batcher: ScanBatcher | None = None
        self._batcher_lock = threading.Lock()
        self.imports = ImportJobs(settings, lambda: self.engine)  # bulk catalog imports (POST /v1/catalog/imports)
        # Called with the engine once it serves (given, or loaded in the background), before any request reaches it.
        self.on_engine: list[Callable[[ScanEngine], object]] = []
        self.batch_max_size = settings.batch_max_size  # 0: measured once the engine is ready
        self.batch_limit_model: str | None = None  # fingerprint of the model `batch_max_size` was measured on

    def start(self) -> None:
        if self.settings.auth_disabled:
            log.warning("!" * 80)
            log.warning("AUTHENTICATION IS DISABLED (COUNTERFEIT_SCAN_AUTH_DISABLED): every request acts as admin.")
            log.warning("Use this for local demos only; never expose this service.")
            log.warning("!" * 80)
        if self.engine is None:
            self._spawn(self._load, "engine-loader")
        else:
            self._engine_ready(self.engine)
        self._spawn(self._save_periodically, "index-saver")
        self._spawn(self._fit_heads_when_due, "head-fitter")
        self.imports.start()

    def _spawn(self, target: object, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def _load(self) -> None:
        try:
            # The heads saved for this model are served at once, stale or not; the head fitter refits them in the
            # background (a 10,000-photo catalog takes minutes), so readiness never waits for a fit.
            engine = ScanEngine.open(self.settings, fit_heads=False)
            self._engine_ready(engine)
            self.engine = engine
            log.info(
                "ready: model %s, index %s with %d images",
                self.engine.embedder.info.short_id,
                self.engine.index.version,
                len(self.engine.index),
            )
        except Exception as exc:  # surfaced by /readyz and every request
            log.exception("could not load the model or index")
            self.error = f"{type(exc).__name__}: {exc}"

    def _engine_ready(self, engine: ScanEngine) -> None:
        if self.settings.batch_max_size == 0:
            self._measure_batch_limit(engine)
        if self.settings.decode_processes:  # started (seconds) before the service reports ready, not at the first scan
            self._start_batcher(engine)
        for callback in self.on_engine:
            callback(engine)

    def _measure_batch_limit(self, engine: ScanEngine) -> None:
        """Settle `batch_max_size` 0 ("measure") for the served model (embeddings/batch_sizing.py): at start, before
        the service reports ready (about a second for EfficientNet-Lite0 on 2 cores), and again after a model switch
        (`_follow_batch_limit`), where the timing shares the cores with the scans going on."""
        embedder = engine.embedder
        rates = batch_rates(embedder, batch_ceiling(embedder))
        self.batch_max_size = largest_fast_batch(rates)
        self.batch_limit_model = embedder.info.fingerprint
        with self._batcher_lock:
            if self._batcher is not None:
                self._batcher.max_batch = self.batch_max_size  # read by its inference threads at their next batch
        shown = {n: round(rate, 1) for n, rate in rates.items()}
        limit = self.batch_max_size
        log.info("%s: model batches of up to %d photos (photos/s by batch: %s)", embedder.info.short_id, limit, shown)

    def _follow_batch_limit(self, engine: ScanEngine) -> None:
        """Measure again when the served model is no longer the one measured (activated, rolled back)."""
        if self.settings.batch_max_size == 0 and engine.embedder.info.fingerprint != self.batch_limit_model:
            self._measure_batch_limit(engine)

    def _save_periodically(self) -> None:
        while not self._stop.wait(self.settings.index_save_interval_s):
            engine = self.engine
            if engine is not None:
                try:
                    engine.refit_index()  # flat -> ivf (and back, and retrained) as HTTP writes grow the catalog
                    engine.save_index_if_dirty()
                    engine.refresh_calibrator()
                    self.switcher.follow_registry(engine)
                    self._follow_batch_limit(engine)
                    engine.follow_catalog()
                except Exception:  # e.g. "database is locked": this thread must outlive any one failure
                    log.exception("periodic upkeep failed (index save, calibrator, registry, catalog); will retry")

    def _fit_heads_when_due(self) -> None:
        """Refit the authenticity heads once catalog changes settle (its own thread: a fit takes seconds to minutes)."""
        while not self._stop.wait(1.0):
            engine = self.engine
            if engine is not None:
                try:
                    engine.refresh_heads_if_due()
                except Exception:  # this thread must outlive any one failure; the next catalog change retries
                    log.exception("refitting the authenticity heads failed; scans keep the heads they had")

    def require_engine(self) -> ScanEngine:
        if self.engine is None:
            raise ServiceNotReady(self.error or "the model and index are still loading")
        return self.engine

    def batcher(self) -> ScanBatcher:
        """The serving engine's micro-batcher (service/scanning/batching.py), started on first use (at start with
        `decode_processes`)."""
        return self._start_batcher(self.require_engine())

    def _start_batcher(self, engine: ScanEngine) -> ScanBatcher:
        with self._batcher_lock:
            if self._stop.is_set():
                raise ServiceNotReady("the service is shutting down")
            if self._batcher is None:
                settings = self.settings.model_copy(update={"batch_max_size": self.batch_max_size})
                self._batcher = ScanBatcher(engine, settings, self.metrics)
            return self._batcher

    def stop(self) -> None:
        self._stop.set()
        with self._batcher_lock:
            batcher, self._batcher = self._batcher, None
        if batcher is not None:
            batcher.close()
        self.imports.stop()
        if self.engine is not None:
            self.engine.close()
