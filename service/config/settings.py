"""One settings object for the service and the CLI, grouped by subsystem (`settings.scoring.top_k`).

Every field is settable three ways, its default stated once, here:
- a flag of the CLI, generated from the field (`--top-k`; cli/options.py);
- its flat environment variable `COUNTERFEIT_SCAN_<FLAT NAME>` (`COUNTERFEIT_SCAN_TOP_K`), the contract DESIGN.md and
  deployments use; a group's fields share a prefix in the flat name where the group has one (`heads.min_per_label` is
  `COUNTERFEIT_SCAN_HEAD_MIN_PER_LABEL`, `--head-min-per-label`);
- the nested variable `COUNTERFEIT_SCAN_<GROUP>__<FIELD>` (`COUNTERFEIT_SCAN_HEADS__MIN_PER_LABEL`).
Constructor keywords take the flat names too (`Settings(top_k=5)`), as the CLI passes its flags.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, Field, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from embeddings import ImageLimits, ModelSpec
from embeddings.authenticity import HeadOptions
from embeddings.index import IndexOptions
from embeddings.runtimes import available_cores, default_inference_threads, resolve_device
from service.config.groups import (
    AccessSettings,
    BulkSettings,
    CalibrationSettings,
    ConsoleSettings,
    HeadSettings,
    ImportSettings,
    IndexSettings,
    LimitSettings,
    ModelSettings,
    RateLimitSettings,
    ScoringSettings,
    ServerSettings,
    SettingsGroup,
    StorageSettings,
    ThroughputSettings,
)

ENV_PREFIX = "COUNTERFEIT_SCAN_"
T = TypeVar("T")


def _flat_name(group: type[SettingsGroup], name: str, field: FieldInfo) -> str:
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    return str(extra.get("flat") or group.flat_prefix + name)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", env_file=None, extra="ignore")

    storage: StorageSettings = Field(default_factory=StorageSettings, description="Where the data lives.")
    # Not `model`: COUNTERFEIT_SCAN_MODEL is the model's name, and a group of that name would read it as the group.
    embedder: ModelSettings = Field(default_factory=ModelSettings, description="The embedding model and its runtime.")
    limits: LimitSettings = Field(default_factory=LimitSettings, description="Input limits.")
    imports: ImportSettings = Field(default_factory=ImportSettings, description="Bulk catalog imports.")
    scoring: ScoringSettings = Field(default_factory=ScoringSettings, description="Scoring of scans.")
    calibration: CalibrationSettings = Field(default_factory=CalibrationSettings, description="Calibration targets.")
    heads: HeadSettings = Field(default_factory=HeadSettings, description="Authenticity heads.")
    access: AccessSettings = Field(default_factory=AccessSettings, description="API keys.")
    rate_limits: RateLimitSettings = Field(default_factory=RateLimitSettings, description="Rate limits per key role.")
    console: ConsoleSettings = Field(default_factory=ConsoleSettings, description="The web console.")
    server: ServerSettings = Field(default_factory=ServerSettings, description="The HTTP server.")
    index: IndexSettings = Field(default_factory=IndexSettings, description="The vector index.")
    throughput: ThroughputSettings = Field(default_factory=ThroughputSettings, description="Batching and decoding.")
    bulk: BulkSettings = Field(default_factory=BulkSettings, description="Bulk scanning (scan-batch): local or on Ray.")

    @classmethod
    def flat_fields(cls) -> Iterator[tuple[str, str, str, FieldInfo]]:
        """(flat name, group, field name, field) of every setting, in declaration order."""
        for group_name, group_field in cls.model_fields.items():
            group = group_field.annotation
            assert isinstance(group, type) and issubclass(group, SettingsGroup)
            for name, field in group.model_fields.items():
                yield _flat_name(group, name, field), group_name, name, field

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Keywords first, then the flat variables (the documented contract), then the nested ones.
        return init_settings, FlatEnvironment(settings_cls), env_settings

    @model_validator(mode="before")
    @classmethod
    def _nest_flat_names(cls, data: Any) -> Any:
        """Constructor keywords by flat name (`top_k=5`, as the CLI passes its flags) go into their group; they win over
        what the environment says of the same field."""
        if not isinstance(data, dict):
            return data
        return nest_flat(data)

    def updated(self, **values: Any) -> Settings:
        """A copy with some settings changed, by flat name (`settings.updated(threads=1, batch_max_size=16)`)."""
        nested = nest_flat(dict(values))
        groups = {name: getattr(self, name).model_copy(update=fields) for name, fields in nested.items()}
        return self.model_copy(update=groups)

    # --- derived values ---------------------------------------------------------------------------------------
    @property
    def resolved_database_url(self) -> str:
        return self.storage.database_url or f"sqlite:///{self.storage.data_dir / 'catalog.sqlite3'}"

    @property
    def request_byte_limit(self) -> int:
        limits = self.limits
        return limits.max_request_bytes or limits.max_photos_per_scan * limits.max_image_bytes + 1024 * 1024

    @property
    def import_request_byte_limit(self) -> int:
        """Body bound of an archive upload: the archive plus room for the other form fields."""
        return self.imports.max_upload_bytes + 1024 * 1024

    @property
    def blob_dir(self) -> Path:
        return self.storage.data_dir / "blobs"

    @property
    def index_dir(self) -> Path:
        return self.storage.index_dir or self.storage.data_dir / "index"

    @property
    def export_dir(self) -> Path:
        return self.storage.data_dir / "models"

    def for_serving(self) -> Settings:
        """These settings with `inference_workers`, `threads` and `decode_workers` settled for serve and scan-batch.

        On CPU with neither set: one single-threaded worker per model core (`default_inference_threads`). Independent
        single-threaded batches beat one batch split over the cores when decoding and HTTP share them: a thread of a
        split batch that loses its core stalls the others at every operator (measured in benchmarks/README.md, "Served
        throughput"). The price: a lone photo runs on one core.
        """
        cores = default_inference_threads()
        throughput, model = self.throughput, self.embedder
        decoding = {"decode_workers": throughput.decode_workers or throughput.decode_processes or available_cores()}
        if throughput.inference_workers:
            threads = model.threads or max(1, cores // throughput.inference_workers)
            return self.updated(threads=threads, **decoding)
        if resolve_device(model.device).startswith("cuda"):
            return self.updated(inference_workers=1, **decoding)
        threads = model.threads or 1
        return self.updated(inference_workers=max(1, cores // threads), threads=threads, **decoding)

    def model_spec(self) -> ModelSpec:
        model = self.embedder
        return ModelSpec(
            name=model.name,
            pretrained=model.pretrained or None,
            checkpoint=model.checkpoint,
            cache_dir=model.cache_dir,
            device=model.device,
            runtime=model.runtime,
            batch_size=model.batch_size,
            threads=model.threads,
            compile=model.torch_compile,
            allow_random_weights=model.allow_random_weights,
        )

    def head_options(self) -> HeadOptions:
        """How the authenticity heads are fitted (the service's background fits and `train`'s figures alike)."""
        return _options(HeadOptions, self.heads, self.calibration)

    def index_options(self) -> IndexOptions:
        return _options(IndexOptions, self.index)

    def image_limits(self) -> ImageLimits:
        return ImageLimits(max_bytes=self.limits.max_image_bytes, max_pixels=self.limits.max_image_pixels)


def _options(cls: type[T], *groups: SettingsGroup) -> T:
    """A library's options dataclass from the settings groups that hold its fields (same names)."""
    values: dict[str, Any] = {}
    for group in groups:
        values.update(group.model_dump())
    return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})  # type: ignore[arg-type]


FLAT_PATHS: dict[str, tuple[str, str]] = {flat: (group, name) for flat, group, name, _ in Settings.flat_fields()}


def nest_flat(data: dict[str, Any]) -> dict[str, Any]:
    """`{"top_k": 5, "heads": {...}}` -> `{"scoring": {"top_k": 5}, "heads": {...}}`: flat names into their groups
    (winning over the same field given nested); anything else is left as it is (and refused if unknown)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in FLAT_PATHS:
            continue
        out[key] = dict(value) if isinstance(value, Mapping) else value
    for key, value in data.items():
        path = FLAT_PATHS.get(key)
        if path is not None:
            group = out.setdefault(path[0], {})
            if isinstance(group, BaseModel):
                group = out[path[0]] = group.model_dump()
            group[path[1]] = value
    return out


class FlatEnvironment(PydanticBaseSettingsSource):
    """`COUNTERFEIT_SCAN_<FLAT NAME>` variables (case-insensitive), nested into their groups."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover - unused
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        environ = {key.upper(): value for key, value in os.environ.items()}
        found: dict[str, Any] = {}
        for flat, (group, name) in FLAT_PATHS.items():
            value = environ.get(ENV_PREFIX + flat.upper())
            if value is not None:
                found.setdefault(group, {})[name] = value
        return found
