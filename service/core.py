"""The service's parts, wired once: what the HTTP service, the console and the CLI share.

`ServiceCore.open` opens the database (once, for every store), builds the stores and the parts, and brings the index
in step with the catalog. It holds no logic of its own: each part has one job.

- `models` (service/models/serving.py): which model serves; its calibrator and authenticity heads; model switches.
- `index_keeper` (service/catalog/index_keeper.py): the serving index and the tables scans read beside it, in step
  with the catalog.
- `writer` (service/catalog/writer.py): every change to the reference catalog.
- `pipeline` (service/scanning/pipeline.py): the one scan pipeline (the micro-batcher feeds it).
- `review` (service/scanning/review.py): reviewers' feedback on scans.
- stores: `catalog`, `scans`, `feedback`, `keys`, `audit`, `blobs` (reference photos), `scan_photos`, `registry`.

One write lock (`write_lock`) orders every write to the catalog, the index and the serving model; scans take none.

`ServiceCore.open_snapshot` builds a read-only core instead (the actors of `scan-batch --engine ray`): the index from an
immutable snapshot (service/catalog/index_snapshot.py), no migration, no index or blob upkeep, nothing created.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from sqlalchemy import make_url

from embeddings import ImageEmbedder, load_embedder
from reference_catalog import AuditLog, BlobStore, CatalogRepository, create_catalog_engine
from service.access.api_keys import ApiKeyStore
from service.catalog.index_keeper import IndexKeeper
from service.catalog.orphan_blobs import collect_orphan_blobs
from service.catalog.writer import CatalogWriter
from service.config import Settings
from service.db.migrate import is_behind, upgrade_if_behind
from service.models.authenticity_heads import HeadKeeper
from service.models.registry import ModelRegistry
from service.models.serving import ServingModels, serving_spec
from service.models.snapshot import ModelSlot, ServingModel, scoring_for
from service.scanning.feedback import FeedbackStore
from service.scanning.pipeline import ScanPipeline
from service.scanning.records import ScanRecordStore
from service.scanning.review import ScanReview

log = logging.getLogger(__name__)


class ServiceCore:
    def __init__(self, settings: Settings, embedder: ImageEmbedder, read_only: bool = False) -> None:
        """Wire the parts around `embedder`, with an empty index: `open` (or `index_keeper.sync`) fills it. A
        `read_only` core creates nothing and migrates nothing (ReadOnlyCoreError when the database is missing or
        behind): `open_snapshot` fills its index."""
        self.settings = settings
        self.read_only = read_only
        if read_only:
            _require_database(settings)
        else:
            settings.storage.data_dir.mkdir(parents=True, exist_ok=True)
        self.database = create_catalog_engine(settings.resolved_database_url)
        self.catalog = CatalogRepository(self.database)
        if read_only:
            if is_behind(self.database):
                self.database.dispose()
                raise ReadOnlyCoreError(
                    f"the database {make_url(settings.resolved_database_url).render_as_string()} is behind this "
                    "release's schema, and a read-only reader never migrates it: run `counterfeit-scan db upgrade` first"
                )
        else:
            upgrade_if_behind(self.database)  # the schema is the migrations' (service/db): an older database is migrated at start
        self.scans = ScanRecordStore(self.database)
        self.feedback = FeedbackStore(self.database)
        self.keys = ApiKeyStore(self.database, settings.access.api_key_cache_s)
        self.audit = AuditLog(self.database)
        self.blobs = BlobStore(settings.blob_dir)
        self.scan_photos = BlobStore(settings.storage.data_dir / "scan_photos")
        self.registry = ModelRegistry(settings.storage.data_dir)
        self.heads = HeadKeeper(settings, self.catalog)
        self.write_lock = threading.RLock()
        empty = ServingModel(embedder, IndexKeeper.empty_index(settings, embedder), None, scoring_for(settings, embedder))
        self.slot = slot = ModelSlot(empty, self.write_lock)
        self.index_keeper = IndexKeeper(settings, self.catalog, self.blobs, slot)
        self.models = ServingModels(settings, self.catalog, slot, self.index_keeper, self.heads)
        self.writer = CatalogWriter(settings, self.catalog, self.blobs, slot, self.index_keeper)
        self.pipeline = ScanPipeline(settings, slot, self.index_keeper, self.heads, self.scans, self.scan_photos)
        self.review = ScanReview(self.scans, self.feedback, self.catalog, self.scan_photos, self.writer, slot)

    @classmethod
    def open(cls, settings: Settings, show_progress: bool = False, fit_heads: bool = True) -> ServiceCore:
        """Load the model (the activated one, if any), the catalog and the index, repairing a stale index."""
        active = ModelRegistry(settings.storage.data_dir).active()
        if active:
            log.warning("serving %s, activated %s (%s); the model settings apply again after `model rollback` "
                        "past it or removing that file", active.weights, active.activated_at,
                        settings.storage.data_dir / "models" / "active.json")  # fmt: skip
        core = cls(settings, load_embedder(serving_spec(settings), settings.export_dir))
        core.index_keeper.sync(show_progress)
        core.models.refresh_heads(fit_heads)  # a service passes False: readiness need not wait for a fit
        core.models.refresh_calibrator()
        collect_orphan_blobs(core.catalog, core.blobs, core.write_lock)
        return core

    @classmethod
    def open_snapshot(cls, settings: Settings, snapshot: Path) -> ServiceCore:
        """A read-only core serving a published index snapshot (`IndexKeeper.publish_snapshot`): the model as `open`
        loads it (its ONNX export must exist: the publishing process loaded it), the saved authenticity heads and
        calibrator as they are. Nothing is written: no migration, no index save, no head fit, no blob walk."""
        _require_database(settings)  # before the model: loading it might export it into a data dir that is not there
        core = cls(settings, load_embedder(serving_spec(settings), settings.export_dir), read_only=True)
        try:
            core.index_keeper.load_snapshot(snapshot)
            core.models.refresh_heads(fit=False)
            core.models.refresh_calibrator()
        except BaseException:
            core.close()
            raise
        return core

    @property
    def model(self) -> ServingModel:
        """The model serving now (its embedder, index, calibrator, scoring and heads): take it once per use."""
        return self.slot.model

    def close(self) -> None:
        if not self.read_only:
            self.index_keeper.save_if_dirty()
        self.database.dispose()


class ReadOnlyCoreError(RuntimeError):
    """A read-only core cannot open: its database is missing or behind this release's schema."""


def _require_database(settings: Settings) -> None:
    """A SQLite file that does not exist would be created by connecting to it: refuse instead."""
    url = make_url(settings.resolved_database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:" and not Path(url.database).is_file():
        raise ReadOnlyCoreError(f"no catalog database at {url.database}: a read-only reader opens an existing one only")
