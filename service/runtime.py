"""Holds the service core while the app runs: loads it in the background and keeps it up to date (index saves and
refits, calibrator, model registry, catalog changes by other processes, authenticity heads).

Several replicas of the service may run on one catalog database (and one data directory, or one each with their own
`index_dir`): every `index_save_interval_s` each one brings in the others' catalog writes from the catalog's change
feed (`IndexKeeper.follow_catalog`) and switches to the model the shared registry names (`ModelSwitcher.follow_registry`);
once a minute it prunes the feed to its last `change_feed_keep_revisions` revisions.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from embeddings.batch_sizing import batch_ceiling, batch_rates, largest_fast_batch
from service.config import Settings
from service.core import ServiceCore
from service.errors import ServiceNotReady
from service.imports.jobs import ImportJobs
from service.metrics import ServiceMetrics
from service.models.switch import ModelSwitcher
from service.scanning.batching import ScanBatcher

log = logging.getLogger(__name__)

PRUNE_INTERVAL_S = 60.0  # how often each replica prunes the catalog's change feed


class ServiceRuntime:
    def __init__(self, settings: Settings, core: ServiceCore | None = None, metrics: ServiceMetrics | None = None) -> None:
        self.settings = settings
        self.core = core
        self.metrics = metrics
        self.error: str | None = None
        self.switcher = ModelSwitcher()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._batcher: ScanBatcher | None = None
        self._batcher_lock = threading.Lock()
        self.imports = ImportJobs(settings, lambda: self.core)  # bulk catalog imports (POST /v1/catalog/imports)
        # Called with the core once it serves (given, or loaded in the background), before any request reaches it.
        self.on_core: list[Callable[[ServiceCore], object]] = []
        self.batch_max_size = settings.throughput.batch_max_size  # 0: measured once the core is ready
        self.batch_limit_model: str | None = None  # fingerprint of the model `batch_max_size` was measured on
        self._pruned_at = 0.0  # monotonic time of the last prune of the change feed

    def start(self) -> None:
        if self.settings.access.auth_disabled:
            log.warning("!" * 80)
            log.warning("AUTHENTICATION IS DISABLED (COUNTERFEIT_SCAN_AUTH_DISABLED): every request acts as admin.")
            log.warning("Use this for local demos only; never expose this service.")
            log.warning("!" * 80)
        if self.core is None:
            self._spawn(self._load, "core-loader")
        else:
            self._core_ready(self.core)
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
            # background (a big catalog's fit is slow: benchmarks/README.md, "Authenticity head"), so readiness
            # never waits for a fit.
            core = ServiceCore.open(self.settings, fit_heads=False)
            self._core_ready(core)
            self.core = core
            model = core.model
            log.info(
                "ready: model %s, index %s with %d images", model.embedder.info.short_id, model.index.version, len(model.index)
            )
        except Exception as exc:  # surfaced by /readyz and every request
            log.exception("could not load the model or index")
            self.error = f"{type(exc).__name__}: {exc}"

    def _core_ready(self, core: ServiceCore) -> None:
        if self.settings.throughput.batch_max_size == 0:
            self._measure_batch_limit(core)
        if self.settings.throughput.decode_processes:  # started (seconds) before the service reports ready, not at the first scan
            self._start_batcher(core)
        for callback in self.on_core:
            callback(core)

    def _measure_batch_limit(self, core: ServiceCore) -> None:
        """Settle `batch_max_size` 0 ("measure") for the served model (embeddings/batch_sizing.py): at start, before
        the service reports ready (about a second for EfficientNet-Lite0 on 2 cores), and again after a model switch
        (`_follow_batch_limit`), where the timing shares the cores with the scans going on."""
        embedder = core.model.embedder
        rates = batch_rates(embedder, batch_ceiling(embedder))
        self.batch_max_size = largest_fast_batch(rates)
        self.batch_limit_model = embedder.info.fingerprint
        with self._batcher_lock:
            if self._batcher is not None:
                self._batcher.max_batch = self.batch_max_size  # read by its inference threads at their next batch
        shown = {n: round(rate, 1) for n, rate in rates.items()}
        limit = self.batch_max_size
        log.info("%s: model batches of up to %d photos (photos/s by batch: %s)", embedder.info.short_id, limit, shown)

    def _follow_batch_limit(self, core: ServiceCore) -> None:
        """Measure again when the served model is no longer the one measured (activated, rolled back)."""
        if self.settings.throughput.batch_max_size == 0 and core.model.embedder.info.fingerprint != self.batch_limit_model:
            self._measure_batch_limit(core)

    def _save_periodically(self) -> None:
        while not self._stop.wait(self.settings.server.index_save_interval_s):
            core = self.core
            if core is not None:
                try:
                    core.index_keeper.follow_catalog()  # other replicas' (and the CLI's) writes, from the change feed
                    core.index_keeper.refit()  # flat -> ivf (and back, and retrained) as HTTP writes grow the catalog
                    core.index_keeper.save_if_dirty()
                    core.models.refresh_calibrator()
                    self.switcher.follow_registry(core)
                    self._follow_batch_limit(core)
                    self._prune_change_feed(core)
                except Exception:  # e.g. "database is locked": this thread must outlive any one failure
                    log.exception("periodic upkeep failed (catalog, index save, calibrator, registry); will retry")

    def _prune_change_feed(self, core: ServiceCore) -> None:
        """Keep the catalog's change feed to its last `change_feed_keep_revisions` revisions, once a minute (a read
        when there is nothing to prune: every replica may do it)."""
        now = time.monotonic()
        if now - self._pruned_at < PRUNE_INTERVAL_S:
            return
        self._pruned_at = now
        keep_after = core.catalog.revision() - self.settings.storage.change_feed_keep_revisions
        if keep_after > 0:
            pruned = core.catalog.prune_changes(keep_after)
            if pruned:
                log.info("change feed pruned: %d rows of revisions up to %d deleted", pruned, keep_after)

    def _fit_heads_when_due(self) -> None:
        """Refit the authenticity heads once catalog changes settle (its own thread: a fit takes seconds to minutes)."""
        while not self._stop.wait(1.0):
            core = self.core
            if core is not None:
                try:
                    core.models.refresh_heads_if_due()
                except Exception:  # this thread must outlive any one failure; the next catalog change retries
                    log.exception("refitting the authenticity heads failed; scans keep the heads they had")

    def require_core(self) -> ServiceCore:
        if self.core is None:
            raise ServiceNotReady(self.error or "the model and index are still loading")
        return self.core

    def batcher(self) -> ScanBatcher:
        """The micro-batcher (service/scanning/batching.py) that feeds the core's scan pipeline, started on first use
        (at start with `decode_processes`)."""
        return self._start_batcher(self.require_core())

    def _start_batcher(self, core: ServiceCore) -> ScanBatcher:
        with self._batcher_lock:
            if self._stop.is_set():
                raise ServiceNotReady("the service is shutting down")
            if self._batcher is None:
                settings = self.settings.updated(batch_max_size=self.batch_max_size)
                self._batcher = ScanBatcher(core.pipeline, settings, self.metrics)
            return self._batcher

    def stop(self) -> None:
        self._stop.set()
        with self._batcher_lock:
            batcher, self._batcher = self._batcher, None
        if batcher is not None:
            batcher.close()
        self.imports.stop()
        if self.core is not None:
            self.core.close()
