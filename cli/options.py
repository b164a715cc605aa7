"""Option groups shared by the commands; every flag overrides its `COUNTERFEIT_SCAN_...` environment variable."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import UnionType
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import click
from pydantic.fields import FieldInfo

F = TypeVar("F", bound=Callable[..., Any])

STORAGE_OPTIONS = [
    click.option("--data-dir", type=click.Path(path_type=Path), help="Data directory [env COUNTERFEIT_SCAN_DATA_DIR; ./data]."),
    click.option("--database-url", help="SQLAlchemy URL of the catalog [env COUNTERFEIT_SCAN_DATABASE_URL]."),
]
MODEL_OPTIONS = [
    click.option("--model", help="open_clip architecture [env COUNTERFEIT_SCAN_MODEL; efficientnet-lite0]."),
    click.option("--pretrained", help="Pretrained tag [env COUNTERFEIT_SCAN_PRETRAINED; imagenet]."),
    click.option("--checkpoint", type=click.Path(path_type=Path), help="Checkpoint file [env COUNTERFEIT_SCAN_CHECKPOINT]."),
    click.option(
        "--model-cache-dir",
        type=click.Path(path_type=Path),
        help="Weights cache [env COUNTERFEIT_SCAN_MODEL_CACHE_DIR].",
    ),
    click.option("--device", help="auto, cpu or cuda [env COUNTERFEIT_SCAN_DEVICE]."),
    click.option("--runtime", type=click.Choice(["auto", "torch", "onnx"]), help="[env COUNTERFEIT_SCAN_RUNTIME]."),
    click.option("--batch-size", type=int, help="Model batch size [env COUNTERFEIT_SCAN_BATCH_SIZE]."),
    click.option("--threads", type=int, help="Inference threads, 0 = runtime default [env COUNTERFEIT_SCAN_THREADS]."),
    click.option("--allow-random-weights", is_flag=True, default=None, help="Tests only: random model weights."),
]
SCORING_OPTIONS = [
    click.option("--top-k", type=int, help="Matches per photo [env COUNTERFEIT_SCAN_TOP_K]."),
    click.option("--match-threshold", type=float, help="Below: not_in_catalog [env COUNTERFEIT_SCAN_MATCH_THRESHOLD]."),
    click.option("--counterfeit-threshold", type=float, help="[env COUNTERFEIT_SCAN_COUNTERFEIT_THRESHOLD; 0.8]."),
    click.option("--authentic-threshold", type=float, help="[env COUNTERFEIT_SCAN_AUTHENTIC_THRESHOLD; 0.2]."),
    click.option("--max-image-bytes", type=int, help="[env COUNTERFEIT_SCAN_MAX_IMAGE_BYTES]."),
    click.option("--max-image-pixels", type=int, help="[env COUNTERFEIT_SCAN_MAX_IMAGE_PIXELS]."),
    click.option("--max-photos-per-scan", type=int, help="[env COUNTERFEIT_SCAN_MAX_PHOTOS_PER_SCAN]."),
]

CONSOLE_OPTIONS = [
    click.option(
        "--console/--no-console",
        "console_enabled",
        default=None,
        help="Serve the web console at /console [env COUNTERFEIT_SCAN_CONSOLE_ENABLED; on].",
    ),
    click.option(
        "--console-cookie-secure/--no-console-cookie-secure",
        default=None,
        help="Secure flag on the console's session cookie [env COUNTERFEIT_SCAN_CONSOLE_COOKIE_SECURE; on].",
    ),
    click.option(
        "--console-session-ttl-s", type=int, help="Console sign-in lifetime [env COUNTERFEIT_SCAN_CONSOLE_SESSION_TTL_S; 28800]."
    ),
]

IMPORT_OPTIONS = [
    click.option(
        "--import-max-upload-bytes", type=int, help="Archive bound [env COUNTERFEIT_SCAN_IMPORT_MAX_UPLOAD_BYTES; 256 MiB]."
    ),
    click.option(
        "--import-max-expanded-bytes",
        type=int,
        help="Bytes an import archive may expand to [env COUNTERFEIT_SCAN_IMPORT_MAX_EXPANDED_BYTES; 2 GiB].",
    ),
    click.option(
        "--import-max-members", type=int, help="Members in an import archive [env COUNTERFEIT_SCAN_IMPORT_MAX_MEMBERS; 50000]."
    ),
    click.option(
        "--import-chunk-rows", type=int, help="Rows per import progress step [env COUNTERFEIT_SCAN_IMPORT_CHUNK_ROWS; 32]."
    ),
]


def _apply(options: list[Callable[[F], F]]) -> Callable[[F], F]:
    def decorator(func: F) -> F:
        for option in reversed(options):
            func = option(func)
        return func

    return decorator


engine_options = _apply([*STORAGE_OPTIONS, *MODEL_OPTIONS])
scoring_options = _apply(SCORING_OPTIONS)
console_options = _apply(CONSOLE_OPTIONS)
import_options = _apply(IMPORT_OPTIONS)


def _field_option(name: str, field: FieldInfo) -> click.Option:
    """A flag for one Settings field, typed from its annotation, its help naming the environment variable."""
    env = f"COUNTERFEIT_SCAN_{name.upper()}"
    default = field.get_default(call_default_factory=True)
    shown = "" if default is None else f"; {default}"
    help_text = f"{field.description or ''} [env {env}{shown}]".strip()
    flag = "--" + name.replace("_", "-")
    annotation = field.annotation
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) in (Union, UnionType) and len(args) == 1:
        annotation = args[0]
    if annotation is bool:
        return click.Option([f"{flag}/--no-{flag[2:]}", name], default=None, help=help_text)
    if get_origin(annotation) is Literal:
        return click.Option([flag, name], type=click.Choice([str(a) for a in get_args(annotation)]), help=help_text)
    kinds: dict[Any, Any] = {int: int, float: float, str: str, Path: click.Path(path_type=Path)}
    return click.Option([flag, name], type=kinds.get(annotation, str), help=help_text)


def all_other_settings(func: F) -> F:
    """Add a flag for every Settings field the command has no option for yet (put it above the other option groups,
    which it then sees), so that every knob of the service is a flag as well as an environment variable."""
    from service.config import Settings

    params: list[click.Parameter] = getattr(func, "__click_params__", [])
    taken = {param.name for param in params}
    missing = [_field_option(name, field) for name, field in Settings.model_fields.items() if name not in taken]
    params[:0] = reversed(missing)  # click lists __click_params__ in reverse: these come last, in field order
    func.__click_params__ = params  # type: ignore[attr-defined]
    return func
