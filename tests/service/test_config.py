"""Settings: grouped, each field settable by its flat variable (the documented contract), the nested one, a keyword and
a generated CLI flag, with its default stated once."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from pydantic import ValidationError

from cli.options import settings_options
from service.config import Settings


def test_groups_hold_the_defaults() -> None:
    settings = Settings()
    assert settings.scoring.top_k == 10
    assert settings.heads.min_per_label == 10
    assert settings.embedder.name == "efficientnet-lite0"
    assert settings.storage.data_dir == Path("data")
    assert settings.resolved_database_url == f"sqlite:///{Path('data') / 'catalog.sqlite3'}"


def test_flat_and_nested_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COUNTERFEIT_SCAN_MODEL", "ViT-B-32")  # the model's name, not the group
    monkeypatch.setenv("COUNTERFEIT_SCAN_HEAD_MIN_PER_LABEL", "7")  # flat: the group's prefix + the field
    monkeypatch.setenv("COUNTERFEIT_SCAN_HEADS__CV_REPEATS", "5")  # nested
    monkeypatch.setenv("COUNTERFEIT_SCAN_console_enabled", "false")  # case does not matter
    settings = Settings()
    assert settings.embedder.name == "ViT-B-32"
    assert (settings.heads.min_per_label, settings.heads.cv_repeats) == (7, 5)
    assert settings.console.enabled is False


def test_keywords_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COUNTERFEIT_SCAN_TOP_K", "3")
    monkeypatch.setenv("COUNTERFEIT_SCAN_SCORING__VOTE_TEMPERATURE", "0.2")
    settings = Settings(top_k=5)
    assert (settings.scoring.top_k, settings.scoring.vote_temperature) == (5, 0.2)


def test_values_are_validated_in_their_group(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="top_k"):
        Settings(top_k=0)
    monkeypatch.setenv("COUNTERFEIT_SCAN_KEEP_SCAN_PHOTOS", "some")
    with pytest.raises(ValidationError, match="keep_scan_photos"):
        Settings()


def test_updated_copies_by_flat_name() -> None:
    settings = Settings(threads=2)
    changed = settings.updated(threads=1, batch_max_size=16)
    assert (changed.embedder.threads, changed.throughput.batch_max_size) == (1, 16)
    assert (settings.embedder.threads, settings.throughput.batch_max_size) == (2, 0)  # the original is unchanged


def test_flat_names_are_unique_and_flags_are_generated() -> None:
    flats = [flat for flat, _, _, _ in Settings.flat_fields()]
    assert len(flats) == len(set(flats))

    @click.command()
    @settings_options("console", "scoring")
    def command(**flags: object) -> None: ...

    params = {param.name: param for param in command.params}
    assert set(params) == {flat for flat, group, _, _ in Settings.flat_fields() if group in ("console", "scoring")}
    assert "--console" in params["console_enabled"].opts  # a field may name its flag
    top_k = params["top_k"]
    assert isinstance(top_k, click.Option) and top_k.help and "COUNTERFEIT_SCAN_TOP_K; 10" in top_k.help
    with pytest.raises(ValueError, match="no settings group"):
        settings_options("nonsense")
