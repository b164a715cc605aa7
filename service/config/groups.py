"""The groups of settings (`settings.scoring`, `settings.heads`, ...): each field's default, bounds and help, stated once."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field


class SettingsGroup(BaseModel):
    """A group of settings. `flat_prefix` starts each field's flat name; a field's `json_schema_extra` may name its
    flat name outright (`{"flat": "model"}`) and its CLI flag (`{"flag": "--console"}`)."""

    model_config = ConfigDict(extra="forbid")
    flat_prefix: ClassVar[str] = ""


class StorageSettings(SettingsGroup):
    data_dir: Path = Field(Path("data"), description="Catalog database, image blobs, index files and model exports.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite file in the data directory.")
    index_dir: Path | None = Field(
        None,
        description="Where the index files are saved; default: <data_dir>/index. Replicas sharing a data directory may "
        "each keep theirs on local disk (a saved index older than the catalog is brought up to date from the catalog).",
    )
    change_feed_keep_revisions: int = Field(
        100_000,
        ge=1,
        description="Catalog revisions whose changes the catalog's change feed keeps (pruned by serve every minute); a "
        "replica whose index is older than that re-reads the whole catalog instead of the changes.",
    )


class ModelSettings(SettingsGroup):
    name: str = Field(
        "efficientnet-lite0", description="open_clip architecture (ours included).", json_schema_extra={"flat": "model"}
    )
    pretrained: str | None = Field("imagenet", description="Pretrained tag: packaged ('imagenet') or open_clip's.")
    checkpoint: Path | None = Field(None, description="Local checkpoint file; overrides `pretrained`.")
    cache_dir: Path | None = Field(
        None, description="Where open_clip looks for (and caches) weights.", json_schema_extra={"flat": "model_cache_dir"}
    )
    device: str = Field("auto", description="auto, cpu or cuda[:N].")
    runtime: Literal["auto", "torch", "onnx"] = Field("auto", description="auto: ONNX Runtime on CPU, torch on GPU.")
    batch_size: int = Field(16, ge=1, le=1024, description="Model batch size.")
    threads: int = Field(0, ge=0, description="Model threads (ONNX Runtime); 0: all cores but a quarter (left for decoding).")
    allow_random_weights: bool = Field(False, description="Tests only: run a model with random weights.")
    torch_compile: bool = Field(False, description="GPU runtime: compile the model with torch.compile (slow start).")


class LimitSettings(SettingsGroup):
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="Largest photo file accepted.")
    max_image_pixels: int = Field(40_000_000, ge=1024, description="Most pixels a photo may decode to.")
    max_photos_per_scan: int = Field(10, ge=1, le=100, description="Most photos one scan takes.")
    max_request_bytes: int | None = Field(
        None, ge=1024, description="Whole request body bound; default: max_photos_per_scan x max_image_bytes + 1 MiB."
    )


class ImportSettings(SettingsGroup):
    """Bulk catalog import over HTTP (POST /v1/catalog/imports, service/imports/)."""

    flat_prefix: ClassVar[str] = "import_"
    max_upload_bytes: int = Field(256 * 1024 * 1024, ge=1024, description="Largest import archive accepted (413).")
    max_expanded_bytes: int = Field(
        2 * 1024 * 1024 * 1024, ge=1024, description="Most bytes an import archive may expand to (zip bombs fail the job)."
    )
    max_members: int = Field(50_000, ge=1, description="Most members (files and folders) in an import archive.")
    chunk_rows: int = Field(32, ge=1, le=10_000, description="Rows imported between two progress checkpoints.")
    lease_s: float = Field(
        30.0, gt=0, le=3600, description="How long an import job stays claimed by its worker without a renewal (every "
        "chunk, and a heartbeat); after that another replica of the service on the same database takes it over.",
    )  # fmt: skip


class ScoringSettings(SettingsGroup):
    top_k: int = Field(10, ge=1, le=100, description="Reference matches considered (and shown) per photo.")
    match_threshold: float | None = Field(None, description="Similarity below which a photo is not in the catalog.")
    counterfeit_threshold: float = Field(0.8, ge=0, le=1, description="Risk at or above: likely_counterfeit.")
    authentic_threshold: float = Field(0.2, ge=0, le=1, description="Risk at or below: likely_authentic.")
    vote_temperature: float = Field(0.05, gt=0, description="Softness of the similarity-weighted kNN vote.")
    near_duplicate_max_bits: int = Field(6, ge=-1, le=32, description="pHash bits that may differ for a near copy; -1: off.")
    keep_scan_photos: Literal["flagged", "all", "none"] = Field(
        "flagged", description="Which scans keep their photos, so that reviewer feedback can add them to the catalog."
    )


class CalibrationSettings(SettingsGroup):
    """Targets of `calibrate` and of the heads' verdict bands (the fitted thresholds travel with the calibrator)."""

    target_fpr: float = Field(0.01, gt=0, lt=1, description="Max false-positive rate of likely_counterfeit.")
    target_miss_rate: float = Field(0.05, gt=0, lt=1, description="Max share of fakes answered likely_authentic.")


class HeadSettings(SettingsGroup):
    """Authenticity heads (embeddings/authenticity.py, service/models/authenticity_heads.py)."""

    flat_prefix: ClassVar[str] = "head_"
    enabled: bool = Field(
        True, description="Score with the authenticity head learned from the catalog's labelled photos where a brand has enough."
    )
    min_per_label: int = Field(
        10, ge=2, description="Authentic and counterfeit photos a brand (or product) needs, each, for a head of its own."
    )
    min_groups_per_label: int = Field(
        2, ge=2, description="Photo shoots (manifest `group`) each label needs for a head: its folds keep a shoot whole."
    )
    cv_repeats: int = Field(3, ge=1, le=20, description="Shuffles of the grouped folds averaged when fitting a head.")
    refit_delay_s: float = Field(
        10.0, ge=0, description="Quiet time after a catalog change before the heads are refitted in the background."
    )
    refit_max_delay_s: float = Field(
        600.0, ge=0, description="Longest a catalog change waits for a refit while changes keep coming."
    )


class AccessSettings(SettingsGroup):
    auth_disabled: bool = Field(False, description="Local demos only: every request acts as admin, with no API key.")
    api_key_cache_s: float = Field(
        5.0, ge=0, le=300, description="Seconds a checked API key stays trusted (revoked by another process: stops within this)."
    )


class RateLimitSettings(SettingsGroup):
    """Per API key, by role (service/access/rate_limit.py): a token bucket per key in each serve process; over it: 429."""

    flat_prefix: ClassVar[str] = "rate_limit_"
    scanner_per_s: float = Field(1000.0, ge=0, description="Requests per second a scanner key may make; 0: unlimited.")
    scanner_burst: int = Field(2000, ge=0, description="Requests a scanner key may make at once; 0: a second's worth.")
    brand_per_s: float = Field(50.0, ge=0, description="Requests per second a brand key may make; 0: unlimited.")
    brand_burst: int = Field(100, ge=0, description="Requests a brand key may make at once; 0: a second's worth.")
    admin_per_s: float = Field(0.0, ge=0, description="Requests per second an admin key may make; 0: unlimited.")
    admin_burst: int = Field(0, ge=0, description="Requests an admin key may make at once; 0: a second's worth.")


class ConsoleSettings(SettingsGroup):
    """The web console (/console, service/console/)."""

    flat_prefix: ClassVar[str] = "console_"
    enabled: bool = Field(True, description="Serve the web console under /console.", json_schema_extra={"flag": "--console"})
    cookie_secure: bool = Field(
        True,
        description="Mark the console's session cookie Secure (HTTPS only; browsers also keep it on http://localhost "
        "and http://127.0.0.1). Turn off only to serve the console over plain HTTP to another host.",
    )
    session_ttl_s: int = Field(
        8 * 3600, ge=60, le=30 * 24 * 3600, description="How long a console sign-in lasts before it must be repeated."
    )


class ServerSettings(SettingsGroup):
    host: str = Field("127.0.0.1", description="Address the service listens on.")
    port: int = Field(8000, ge=1, le=65535, description="Port the service listens on.")
    http_parser: Literal["auto", "httptools", "h11"] = Field(
        "auto",
        description="uvicorn's HTTP/1.1 parser: httptools (C, installed with the service) or h11 (pure Python); "
        "auto: httptools when importable.",
    )
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        "auto", description="uvicorn's event loop: uvloop (installed with the service) or asyncio; auto: uvloop when importable."
    )
    index_save_interval_s: float = Field(5.0, gt=0, description="How often a changed index is written to disk.")
    log_level: str = Field("info", description="Log level: debug, info, warning, error.")


class IndexSettings(SettingsGroup):
    """The vector index (embeddings/index.py): exact below `ivf_min_vectors`, inverted lists (IVF) from there on."""

    flat_prefix: ClassVar[str] = "index_"
    ivf_min_vectors: int = Field(
        10_000, ge=1, description="Catalog size from which the index is IVF (approximate) instead of flat (exact)."
    )
    nlist: int = Field(0, ge=0, description="IVF lists; 0: 4 x sqrt(catalog size) when the index is trained.")
    nprobe: int = Field(64, ge=1, le=65_536, description="IVF lists probed per search (recall against cost).")
    rerank: int = Field(5, ge=1, le=100, description="IVF candidates re-ranked exactly on the full vectors: top_k x this.")
    exact_scope_max: int = Field(
        2_000, ge=0, description="Brand/product scopes of at most this many images are searched exactly (IVF index)."
    )


class ThroughputSettings(SettingsGroup):
    """Micro-batching of /v1/scan, decoding threads and processes, backpressure (service/scanning/batching.py)."""

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


class BulkSettings(SettingsGroup):
    """`counterfeit-scan scan-batch` (cli/bulk.py): in this process, or in Ray actors (service/bulk/ray_engine.py)."""

    flat_prefix: ClassVar[str] = "bulk_"
    engine: Literal["local", "ray"] = Field(
        "local",
        description="Where scan-batch scans: local (this process) or ray (Ray Data actors on this machine or a cluster; "
        "pip install 'counterfeit-scan[ray]').",
        json_schema_extra={"flag": "--engine"},
    )
    ray_address: str | None = Field(
        None,
        description="Ray cluster of --engine ray: auto (the one this machine belongs to) or ray://host:10001; "
        "default: start a private Ray on this machine.",
        json_schema_extra={"flag": "--address"},
    )
    ray_actors: int = Field(
        0, ge=0, le=4096, description="Scanning actors of --engine ray; 0: as many as fit the cluster's CPUs, one CPU left over.",
        json_schema_extra={"flag": "--actors"},
    )  # fmt: skip
    ray_actor_cpus: float = Field(
        1.0, gt=0, le=256, description="CPUs each actor reserves (its model and decoding threads).",
        json_schema_extra={"flag": "--actor-cpus"},
    )  # fmt: skip
    ray_gpus_per_actor: float = Field(
        0.0, ge=0, le=16, description="GPUs each actor reserves (0: none; the model then runs on CPU).",
        json_schema_extra={"flag": "--gpus-per-actor"},
    )  # fmt: skip
