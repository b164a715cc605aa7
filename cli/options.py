"""Every command's settings flags, generated from the Settings fields (service/config.py), where their defaults and
help are stated once; every flag overrides its `COUNTERFEIT_SCAN_...` environment variable."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import UnionType
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import click
from pydantic.fields import FieldInfo

from service.config import ENV_PREFIX, Settings

F = TypeVar("F", bound=Callable[..., Any])


def _field_option(flat: str, field: FieldInfo) -> click.Option:
    """A flag for one setting, typed from its annotation, its help naming the environment variable and the default."""
    env = ENV_PREFIX + flat.upper()
    default = field.get_default(call_default_factory=True)
    shown = "" if default is None else f"; {default}"
    help_text = f"{field.description or ''} [env {env}{shown}]".strip()
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    flag = str(extra.get("flag") or "--" + flat.replace("_", "-"))
    annotation = field.annotation
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) in (Union, UnionType) and len(args) == 1:
        annotation = args[0]
    if annotation is bool:
        return click.Option([f"{flag}/--no-{flag[2:]}", flat], default=None, help=help_text)
    if get_origin(annotation) is Literal:
        return click.Option([flag, flat], type=click.Choice([str(a) for a in get_args(annotation)]), help=help_text)
    kinds: dict[Any, Any] = {int: int, float: float, str: str, Path: click.Path(path_type=Path)}
    return click.Option([flag, flat], type=kinds.get(annotation, str), help=help_text)


def _add_options(func: F, wanted: Callable[[str], bool]) -> F:
    """Add a flag for each setting `wanted` picks (by group) that the command has no option for yet."""
    params: list[click.Parameter] = getattr(func, "__click_params__", [])
    taken = {param.name for param in params}
    missing = [
        _field_option(flat, field) for flat, group, _, field in Settings.flat_fields() if wanted(group) and flat not in taken
    ]
    params[:0] = reversed(missing)  # click lists __click_params__ in reverse: these come last, in field order
    func.__click_params__ = params  # type: ignore[attr-defined]
    return func


def settings_options(*groups: str) -> Callable[[F], F]:
    """A decorator adding the flags of these Settings groups (`settings_options("storage", "embedder")`)."""
    unknown = set(groups) - set(Settings.model_fields)
    if unknown:
        raise ValueError(f"no settings group {sorted(unknown)}")
    return lambda func: _add_options(func, lambda group: group in groups)


def all_other_settings(func: F) -> F:
    """Add a flag for every setting the command has no option for yet (put it above the other option groups, which it
    then sees), so that every knob of the service is a flag as well as an environment variable."""
    return _add_options(func, lambda _: True)


engine_options = settings_options("storage", "embedder")
scoring_options = settings_options("scoring", "limits")
console_options = settings_options("console")
import_options = settings_options("imports")
