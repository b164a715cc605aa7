"""`counterfeit-scan train`: learn from labelled manifests; writes a checkpoint `embeddings` loads and `model activate`
serves.

By default (`--backbone frozen`) the base model's weights stay as they are and the checkpoint carries the photos' detail
features, which the service adds to the catalog's labelled photos when it fits its authenticity heads. `--backbone
finetune` also trains the vision tower (training/finetune): on the development photos that made unseen-shoot ROC-AUC
worse than the base model's kNN vote, and further below the head on frozen features (see benchmarks/README.md,
sections "Fine-tuning" and "Authenticity head"), so it is not the default.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from cli.common import make_settings
from cli.options import settings_options
from embeddings import ModelLoadError, ModelSpec
from service.config import Settings
from training.finetune.config import FinetuneConfig

# Training flags whose value None means "the FinetuneConfig default" (or, on --resume, "as the run was started").
_CONFIG_FLAGS = (
    "epochs", "batch_size", "samples_per_class", "lr", "weight_decay", "warmup_fraction", "image_size", "unfreeze", "bn",
    "loss", "temperature", "margin", "anchor", "class_key", "seed", "val_fraction", "patience", "monitor", "num_workers", "amp",
)  # fmt: skip
# Their help shows FinetuneConfig's defaults, stated there only.
DEFAULTS = {f.name: f.default for f in dataclasses.fields(FinetuneConfig) if f.default is not dataclasses.MISSING}
_SUMMARY_FIGURES = ("roc_auc", "tpr_at_fpr_1pct", "product_recall_at_1")
_SHOWN_SKIPS = 10


def _unfreeze(value: str | None) -> int | str | None:
    if value is None or value == "all":
        return value
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter("a number of blocks or 'all'", param_hint="--unfreeze") from None


@click.command()
@settings_options("storage", "embedder", "heads", "calibration")  # the base model's; --batch-size stays training's
@click.argument("manifests", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--backbone",
    type=click.Choice(["frozen", "finetune"]),
    default="frozen",
    show_default=True,
    envvar="COUNTERFEIT_SCAN_TRAIN_BACKBONE",
    show_envvar=True,
    help="frozen: keep the base model's weights, the checkpoint carries the photos for the authenticity head; "
    "finetune: also train the vision tower (--resume and the optimisation, model, objective and validation options, "
    "--workers and --amp apply only to it).",
)
@click.option("--split", help="Keep only rows whose 'split' column equals this (e.g. reference).")
@click.option(
    "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), help="Run directory [<data-dir>/training/<time>]."
)
# Fine-tuning only (--backbone finetune)
@click.option(
    "--resume",
    "resume_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Continue the interrupted fine-tuning run in this directory (its last.pt); MANIFESTS are then optional.",
)
# Optimisation
@click.option("--epochs", type=int, help=f"Epochs (passes over the training photos) [{DEFAULTS['epochs']}].")
@click.option("--batch-size", type=int, help=f"Photos per optimisation step [{DEFAULTS['batch_size']}].")
@click.option("--samples-per-class", type=int, help=f"Photos per class in a batch [{DEFAULTS['samples_per_class']}].")
@click.option("--lr", type=float, help=f"Peak learning rate of AdamW, warm-up then cosine decay [{DEFAULTS['lr']}].")
@click.option("--weight-decay", type=float, help=f"AdamW weight decay [{DEFAULTS['weight_decay']}].")
@click.option(
    "--warmup-fraction",
    type=float,
    help=f"Share of the steps spent warming up the learning rate [{DEFAULTS['warmup_fraction']}].",
)
@click.option("--seed", type=int, help=f"Seed of the split, batches, augmentations and initialisation [{DEFAULTS['seed']}].")
# Model
@click.option("--image-size", type=int, help="Input size in pixels [the base model's].")
@click.option(
    "--unfreeze",
    help=f"How many of the last blocks/stages train (plus the layers after them), or 'all' [{DEFAULTS['unfreeze']}].",
)
@click.option(
    "--bn", type=click.Choice(["frozen", "train"]), help=f"BatchNorm statistics: keep (frozen) or update [{DEFAULTS['bn']}]."
)
# Objective
@click.option(
    "--loss",
    type=click.Choice(["supcon", "triplet"]),
    help=f"Supervised contrastive, or batch-hard triplet [{DEFAULTS['loss']}].",
)
@click.option("--temperature", type=float, help=f"Temperature of the supervised contrastive loss [{DEFAULTS['temperature']}].")
@click.option("--margin", type=float, help=f"Margin of the triplet loss (cosine distance) [{DEFAULTS['margin']}].")
@click.option(
    "--anchor",
    type=float,
    help=f"Weight of the pull towards the base model's embedding (keeps unrelated photos far); 0: none [{DEFAULTS['anchor']}].",
)
@click.option("--class-key", type=click.Choice(["product_label", "product"]),
              help=f"Classes: brand/product/label, or brand/product for retrieval only [{DEFAULTS['class_key']}].")  # fmt: skip
# Validation
@click.option(
    "--val-fraction", type=float, help=f"Share of photo GROUPS held out for validation; 0: none [{DEFAULTS['val_fraction']}]."
)
@click.option("--patience", type=int, help=f"Epochs without a better validation figure before stopping [{DEFAULTS['patience']}].")
@click.option("--monitor", type=click.Choice(["auto", "roc_auc", "tpr_at_fpr_1pct", "product_recall_at_1"]),
              help="Validation figure for early stopping; auto: ROC-AUC, or product recall@1 with one label "
              f"[{DEFAULTS['monitor']}].")  # fmt: skip
# Runtime
@click.option("--workers", "num_workers", type=int, help="Data-loading processes [min(2, cores)].")
@click.option("--amp/--no-amp", default=None, help="Mixed precision [on with a GPU, off on CPU].")
def train(
    manifests: tuple[Path, ...],
    backbone: str,
    split: str | None,
    out_dir: Path | None,
    resume_dir: Path | None,
    unfreeze: str | None,
    **flags: Any,
) -> None:
    """Learn from labelled photos (path,brand,product,label[,group][,split] manifests), e.g. a brand's past takedowns
    that should not be search references.

    --backbone frozen (default): decode and embed the photos with the base model and write checkpoint.pt, the base
    weights unchanged (same fingerprint) carrying the photos' detail features, and report.json with the grouped
    cross-validation figures of heads fitted on these photos alone. `counterfeit-scan model activate CHECKPOINT`
    then serves authenticity heads fitted on these photos plus the catalog's. A base checkpoint's own photos are kept.
    Rows that cannot be used (unreadable or undecodable photos, bad labels, repeats) are listed and skipped.

    --backbone finetune: also fine-tune the vision tower. Photos of the same product and label are pulled together,
    authentic and counterfeit photos of one product pushed apart; validation holds out whole photo groups and scores
    them like the service (10-NN vote). Writes best.pt (carrying the photos, embedded with the new weights), last.pt
    (resume state), metrics.jsonl, training_curves.png (needs the plots extra: pip install 'counterfeit-scan[plots]')
    and report.json.
    """
    ctx = click.get_current_context()
    given = {name: flags.pop(name) for name in _CONFIG_FLAGS if name in flags}
    given["unfreeze"] = _unfreeze(unfreeze)
    given = {name: value for name, value in given.items() if value is not None}
    if resume_dir is not None:
        if backbone == "frozen" and ctx.get_parameter_source("backbone") == ParameterSource.COMMANDLINE:
            raise click.UsageError("--resume continues a fine-tuning run: use it with --backbone finetune")
        backbone = "finetune"
    settings = make_settings(**flags)
    if backbone == "frozen":
        if given:
            names = {param.name: param.opts[0] for param in ctx.command.params}
            options = ", ".join(names.get(name, name) for name in given)
            raise click.UsageError(
                f"{options} only apply to fine-tuning the backbone: add --backbone finetune, or leave them out to fit "
                "the authenticity head on the frozen base model's features"
            )
        _frozen(settings, manifests, split, out_dir)
    else:
        _finetune(settings, manifests, split, out_dir, resume_dir, given, bool(flags.get("device")))


def _frozen(settings: Settings, manifests: tuple[Path, ...], split: str | None, out_dir: Path | None) -> None:
    from training.finetune import TrainingDataError
    from training.head_photos import build_head_checkpoint

    if not manifests:
        raise click.UsageError("give at least one MANIFEST")
    out = out_dir or _default_out(settings)
    try:
        result = build_head_checkpoint(
            settings.model_spec(),
            list(manifests),
            split,
            out,
            limits=settings.image_limits(),
            options=settings.head_options(),
            export_dir=settings.export_dir,
            show_progress=sys.stderr.isatty(),
        )
    except (TrainingDataError, ModelLoadError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    report = result.report
    _echo_problems(report["warnings"], report["skipped_rows"])
    summary = {key: report[key] for key in ("backbone", "out_dir", "checkpoint", "fingerprint", "base_model", "head_photos")}
    summary["skipped_rows"] = len(report["skipped_rows"])
    summary["head_cross_validation"] = report["head_cross_validation"]
    summary["next_step"] = report["next_step"]
    click.echo(json.dumps(summary, indent=2))


def _finetune(
    settings: Settings,
    manifests: tuple[Path, ...],
    split: str | None,
    out_dir: Path | None,
    resume_dir: Path | None,
    given: dict[str, Any],
    device_given: bool,
) -> None:
    from training.finetune import FinetuneConfig, ResumeError, TrainingDataError, finetune, resume_settings

    try:
        if resume_dir is not None:
            saved, base_spec, saved_manifests, saved_split = resume_settings(resume_dir)
            if manifests and [m.resolve() for m in manifests] != [m.resolve() for m in saved_manifests]:
                raise click.UsageError("--resume continues the run's own manifests; leave MANIFESTS out")
            if device_given:
                given["device"] = settings.embedder.device
            config = FinetuneConfig.from_dict({**saved.as_dict(), **given})
            used, used_split = saved_manifests, saved_split
            result = finetune(config, base_spec, saved_manifests, saved_split, resume_dir, resume=True)
        else:
            if not manifests:
                raise click.UsageError("give at least one MANIFEST (or --resume RUN_DIR)")
            config = FinetuneConfig(**{**given, "device": settings.embedder.device})
            out = out_dir or _default_out(settings)
            base_spec, used, used_split = settings.model_spec(), list(manifests), split
            result = finetune(config, base_spec, used, used_split, out)
    except (TrainingDataError, ResumeError, ModelLoadError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    report = result.report
    for warning in report["data"]["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    if report["data"]["skipped_rows"]:
        click.echo(f"{len(report['data']['skipped_rows'])} manifest rows skipped; see report.json", err=True)
    summary = {"backbone": "finetune", **_summary(result.out_dir, report)}
    summary["head"] = _attach_head(settings, base_spec, result.best_checkpoint, used, used_split, result.out_dir, report)
    click.echo(json.dumps(summary, indent=2))


def _attach_head(
    settings: Settings,
    base_spec: ModelSpec,
    best: Path,
    manifests: list[Path],
    split: str | None,
    out_dir: Path,
    report: dict[str, Any],
) -> dict[str, Any] | None:
    """Make the fine-tuned checkpoint carry the run's photos for the authenticity head (embedded with its weights);
    the section is added to report.json and returned for the summary."""
    from training.finetune import TrainingDataError
    from training.finetune.outputs import write_report
    from training.head_photos import attach_head_photos, checkpoint_metadata

    if not best.is_file():
        click.echo("warning: no checkpoint was written, so none carries the photos for the authenticity head", err=True)
        return None
    try:
        attached = attach_head_photos(
            best,
            settings.model_spec(),
            manifests,
            split,
            limits=settings.image_limits(),
            options=settings.head_options(),
            export_dir=settings.export_dir,
            show_progress=sys.stderr.isatty(),
        )
    except (TrainingDataError, ModelLoadError, ValueError) as exc:
        raise click.ClickException(f"fine-tuning finished, but its photos could not be attached to {best}: {exc}") from exc
    head = attached.report
    base_checkpoint = base_spec.checkpoint
    carried = ((checkpoint_metadata(Path(base_checkpoint)) or {}).get("head_photos") or {}) if base_checkpoint else {}
    if carried.get("count"):
        head["warnings"].append(
            f"the base checkpoint's {carried['count']} labelled photos were embedded with the base weights and are not "
            "carried into the fine-tuned checkpoint: add their manifests to this run to keep them"
        )
    _echo_problems(head["warnings"], head["skipped_rows"])
    report["head"] = head
    write_report(out_dir, report)
    summary: dict[str, Any] = {key: head[key] for key in ("head_photos", "head_cross_validation") if key in head}
    summary["skipped_rows"] = len(head["skipped_rows"])
    if attached.checkpoint is not None:
        summary["checkpoint"] = str(attached.checkpoint)
        summary["next_step"] = f"counterfeit-scan model activate {attached.checkpoint}"
    return summary


def _default_out(settings: Settings) -> Path:
    return settings.storage.data_dir / "training" / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def _echo_problems(warnings: list[str], skipped: list[str]) -> None:
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    for row in skipped[:_SHOWN_SKIPS]:
        click.echo(f"skipped: {row}", err=True)
    if len(skipped) > _SHOWN_SKIPS:
        click.echo(f"... {len(skipped) - _SHOWN_SKIPS} more rows skipped; see report.json", err=True)


def _summary(out_dir: Path, report: dict[str, Any]) -> dict[str, Any]:
    """The headline of report.json, printed when training ends."""

    def figures(side: str) -> dict[str, Any] | None:
        values = report.get(side)
        return None if values is None else {name: values.get(name) for name in _SUMMARY_FIGURES}

    return {
        "out_dir": str(out_dir),
        "best_checkpoint": report["best_checkpoint"],
        "fingerprint": report["fingerprint"],
        "finished": report["finished"],
        "epochs_trained": report["epochs_trained"],
        "best_epoch": report["best_epoch"],
        "stopped_early": report.get("stopped_early"),
        "validation_before": figures("validation_before"),
        "validation_after": figures("validation_after"),
        "improved_over_base": report["improved_over_base"],
        "train": {"images": report["data"]["train"]["images"], "groups": report["data"]["train"]["groups"]},
        "validation": {"images": report["data"]["validation"]["images"], "groups": report["data"]["validation"]["groups"]},
        "time": report["time"],
        "memory": report["memory"],
        "device": report["environment"]["device"],
    }
