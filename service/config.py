"""One settings object for the service and the CLI; each field is also `COUNTERFEIT_SCAN_<FIELD>` in the env."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from embeddings import ImageLimits, ModelSpec
from embeddings.authenticity import HeadOptions
from embeddings.index import IndexOptions
from embeddings.runtimes import available_cores, default_inference_threads, resolve_device


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COUNTERFEIT_SCAN_", env_file=None, extra="ignore")

    # Storage
    data_dir: Path = Field(Path("data"), description="Catalog database, image blobs, index files and model exports.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite file in the data directory.")

    # Model
    model: str = Field("efficientnet-lite0", description="open_clip architecture (ours included).")
    pretrained: str | None = Field("imagenet", description="Pretrained tag: packaged ('imagenet') or open_clip's.")
    checkpoint: Path | None = Field(None, description="Local checkpoint file; overrides `pretrained`.")
    model_cache_dir: Path | None = Field(None, description="Where open_clip looks for (and caches) weights.")
    device: str = Field("auto", description="auto, cpu or cuda[:N].")
    runtime: Literal["auto", "torch", "onnx"] = Field("auto", description="auto: ONNX Runtime on CPU, torch on GPU.")
    batch_size: int = Field(16, ge=1, le=1024)
    threads: int = Field(0, ge=0, description="Model threads (ONNX Runtime); 0: all cores but a quarter (left for decoding).")
    allow_random_weights: bool = Field(False, description="Tests only: run a model with random weights.")

    # Input limits
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=1024)
    max_photos_per_scan: int = Field(10, ge=1, le=100)
    max_request_bytes: int | None = Field(
        None, ge=1024, description="Whole request body bound; default: max_photos_per_scan x max_image_bytes + 1 MiB."
    )

    # Bulk catalog import over HTTP (POST /v1/catalog/imports, service/imports/jobs.py)
    import_max_upload_bytes: int = Field(256 * 1024 * 1024, ge=1024, description="Largest import archive accepted (413).")
    import_max_expanded_bytes: int = Field(
        2 * 1024 * 1024 * 1024, ge=1024, description="Most bytes an import archive may expand to (zip bombs fail the job)."
    )
    import_max_members: int = Field(50_000, ge=1, description="Most members (files and folders) in an import archive.")
    import_chunk_rows: int = Field(32, ge=1, le=10_000, description="Rows imported between two progress checkpoints.")

    # Scoring
    top_k: int = Field(10, ge=1, le=100, description="Reference matches considered (and shown) per photo.")
    match_threshold: float | None = Field(None, description="Similarity below which a photo is not in the catalog.")
    counterfeit_threshold: float = Field(0.8, ge=0, le=1, description="Risk at or above: likely_counterfeit.")
    authentic_threshold: float = Field(0.2, ge=0, le=1, description="Risk at or below: likely_authentic.")
    vote_temperature: float = Field(0.05, gt=0, description="Softness of the similarity-weighted kNN vote.")
    near_duplicate_max_bits: int = Field(6, ge=-1, le=32, description="pHash bits that may differ for a near copy; -1: off.")
    keep_scan_photos: Literal["flagged", "all", "none"] = Field(
        "flagged", description="Which scans keep their photos, so that reviewer feedback can add them to the catalog."
    )

    # Calibration targets (used by `calibrate`; the fitted thresholds travel with the calibrator)
    target_fpr: float = Field(0.01, gt=0, lt=1, description="Max false-positive rate of likely_counterfeit.")
    target_miss_rate: float = Field(0.05, gt=0, lt=1, description="Max share of fakes answered likely_authentic.")

    # Authenticity head (embeddings/authenticity.py, service/models/authenticity_heads.py)
    head_enabled: bool = Field(
        True, description="Score with the authenticity head learned from the catalog's labelled photos where a brand has enough."
    )
    head_min_per_label: int = Field(
        10, ge=2, description="Authentic and counterfeit photos a brand (or product) needs, each, for a head of its own."
    )
    head_min_groups_per_label: int = Field(
        2, ge=2, description="Photo shoots (manifest `group`) each label needs for a head: its folds keep a shoot whole."
    )
    head_cv_repeats: int = Field(3, ge=1, le=20, description="Shuffles of the grouped folds averaged when fitting a head.")
    head_refit_delay_s: float = Field(
        10.0, ge=0, description="Quiet time after a catalog change before the heads are refitted in the background."
    )
    head_refit_max_delay_s: float = Field(
        600.0, ge=0, description="Longest a catalog change waits for a refit while changes keep coming."
    )

    # Access
    auth_disabled: bool = Field(False, description="Local demos only: every request acts as admin, with no API key.")
    api_key_cache_s: float = Field(
        5.0, ge=0, le=300, description="Seconds a checked API key stays trusted (revoked by another process: stops within this)."
    )

    # Rate limits per API key, by role (service/access/rate_limit.py): a token bucket per key in each serve process; over it: 429
    rate_limit_scanner_per_s: float = Field(1000.0, ge=0, description="Requests per second a scanner key may make; 0: unlimited.")
    rate_limit_scanner_burst: int = Field(2000, ge=0, description="Requests a scanner key may make at once; 0: a second's worth.")
    rate_limit_brand_per_s: float = Field(50.0, ge=0, description="Requests per second a brand key may make; 0: unlimited.")
    rate_limit_brand_burst: int = Field(100, ge=0, description="Requests a brand key may make at once; 0: a second's worth.")
    rate_limit_admin_per_s: float = Field(0.0, ge=0, description="Requests per second an admin key may make; 0: unlimited.")
    rate_limit_admin_burst: int = Field(0, ge=0, description="Requests an admin key may make at once; 0: a second's worth.")

    # Web console (/console, service/console/)
    console_enabled: bool = Field(True, description="Serve the web console under /console.")
    console_cookie_secure: bool = Field(
        True,
        description="Mark the console's session cookie Secure (HTTPS only; browsers also keep it on http://localhost "
        "and http://127.0.0.1). Turn off only to serve the console over plain HTTP to another host.",
    )
    console_session_ttl_s: int = Field(
        8 * 3600, ge=60, le=30 * 24 * 3600, description="How long a console sign-in lasts before it must be repeated."
    )

    # Serving
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    http_parser: Literal["auto", "httptools", "h11"] = Field(
        "auto",
        description="uvicorn's HTTP/1.1 parser: httptools (C, installed with the service) or h11 (pure Python); "
        "auto: httptools when importable.",
    )
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        "auto", description="uvicorn's event loop: uvloop (installed with the service) or asyncio; auto: uvloop when importable."
    )
    index_save_interval_s: float = Field(5.0, gt=0, description="How often a changed index is written to disk.")

    # Vector index (embeddings/index.py): exact below index_ivf_min_vectors, inverted lists (IVF) from there on
    index_ivf_min_vectors: int = Field(
        10_000, ge=1, description="Catalog size from which the index is IVF (approximate) instead of flat (exact)."
    )
    index_nlist: int = Field(0, ge=0, description="IVF lists; 0: 4 x sqrt(catalog size) when the index is trained.")
    index_nprobe: int = Field(64, ge=1, le=65_536, description="IVF lists probed per search (recall against cost).")
    index_rerank: int = Field(5, ge=1, le=100, description="IVF candidates re-ranked exactly on the full vectors: top_k x this.")
    index_exact_scope_max: int = Field(
        2_000, ge=0, description="Brand/product scopes of at most this many images are searched exactly (IVF index)."
    )

    # Throughput: micro-batching of /v1/scan, decoding threads, backpressure (see service/scanning/batching.py)
    batch_max_size: int = Field(
        0,
        ge=0,
        le=1024,
        description="Most photos of concurrent scans run as one model batch; 0: measured at start and after a model "
        "switch, the largest batch up to 16 (256 on a GPU) at which the model runs within 10% of its best photos/s.",
    )
    batch_max_wait_ms: float = Field(
        2.0, ge=0, le=1000, description="How long the first photo of a batch waits for others (no wait when busy)."
    )
    queue_max_photos: int = Field(256, ge=1, description="Photos admitted and not yet answered; beyond it: 429.")
    retry_after_s: int = Field(1, ge=1, le=3600, description="Retry-After sent with a 429 when the queue is full.")
    decode_workers: int = Field(
        0, ge=0, le=256, description="Image decoding threads; 0: one per CPU core, or one per `decode_processes`."
    )
    decode_processes: int = Field(
        0,
        ge=0,
        le=256,
        description="Worker processes that decode, resize and hash scan photos (the decoding threads hand them the work); "
        "0: decode in the service's own process. For machines with many cores (a GPU server), where one process's "
        "interpreter lock caps decoding; they start with the service, forked from a fork server that imports it once.",
    )
    decode_nice: int = Field(
        5,
        ge=0,
        le=19,
        description="Niceness the decoding threads add to the process's (Linux): when they and the model want the same "
        "cores, the photos already decoded finish first; 0: equal priority.",
    )
    inference_workers: int = Field(
        0,
        ge=0,
        le=64,
        description="Model batches run side by side (serve, scan-batch), each on `threads` cores; 0: on CPU one "
        "single-threaded worker per model core (or model cores / `threads` when set), on a GPU one.",
    )
    torch_compile: bool = Field(False, description="GPU runtime: compile the model with torch.compile (slow start).")
    log_level: str = "info"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'catalog.sqlite3'}"

    @property
    def request_byte_limit(self) -> int:
        return self.max_request_bytes or self.max_photos_per_scan * self.max_image_bytes + 1024 * 1024

    @property
    def import_request_byte_limit(self) -> int:
        """Body bound of an archive upload: the archive plus room for the other form fields."""
        return self.import_max_upload_bytes + 1024 * 1024

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "index"

    @property
    def export_dir(self) -> Path:
        return self.data_dir / "models"

    def for_serving(self) -> Settings:
        """These settings with `inference_workers`, `threads` and `decode_workers` settled for serve and scan-batch.

        On CPU with neither set: one single-threaded worker per model core (`default_inference_threads`). Independent
        single-threaded batches beat one batch split over the cores when decoding and HTTP share them: a thread of a
        split batch that loses its core stalls the others at every operator (EfficientNet-Lite0 served 106 instead of
        92 photos/s at c=16 on 2 cores, benchmarks/README.md). The price: a lone photo runs on one core.
        """
        cores = default_inference_threads()
        decoding = {"decode_workers": self.decode_workers or self.decode_processes or available_cores()}
        if self.inference_workers:
            threads = self.threads or max(1, cores // self.inference_workers)
            return self.model_copy(update={"threads": threads, **decoding})
        if resolve_device(self.device).startswith("cuda"):
            return self.model_copy(update={"inference_workers": 1, **decoding})
        threads = self.threads or 1
        return self.model_copy(update={"inference_workers": max(1, cores // threads), "threads": threads, **decoding})

    def model_spec(self) -> ModelSpec:
        return ModelSpec(
            name=self.model,
            pretrained=self.pretrained or None,
            checkpoint=self.checkpoint,
            cache_dir=self.model_cache_dir,
            device=self.device,
            runtime=self.runtime,
            batch_size=self.batch_size,
            threads=self.threads,
            compile=self.torch_compile,
            allow_random_weights=self.allow_random_weights,
        )

    def head_options(self) -> HeadOptions:
        """How the authenticity heads are fitted (the service's background fits and `train`'s figures alike)."""
        return HeadOptions(
            min_per_label=self.head_min_per_label,
            min_groups_per_label=self.head_min_groups_per_label,
            cv_repeats=self.head_cv_repeats,
            target_fpr=self.target_fpr,
            target_miss_rate=self.target_miss_rate,
        )

    def index_options(self) -> IndexOptions:
        return IndexOptions(
            ivf_min_vectors=self.index_ivf_min_vectors,
            nlist=self.index_nlist,
            nprobe=self.index_nprobe,
            rerank=self.index_rerank,
            exact_scope_max=self.index_exact_scope_max,
        )

    def image_limits(self) -> ImageLimits:
        return ImageLimits(max_bytes=self.max_image_bytes, max_pixels=self.max_image_pixels)
