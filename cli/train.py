"""`counterfeit-scan train`: fine-tune the embedding model on labelled manifests; writes a checkpoint `embeddings` loads."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from cli.common import make_settings
from embeddings import ModelLoadError

# Training flags whose value None means "the FinetuneConfig default" (or, on --resume, "as the run was started").
_CONFIG_FLAGS = (
    "epochs", "batch_size", "samples_per_class", "lr", "weight_decay", "warmup_fraction", "image_size", "unfreeze", "bn",
    "loss", "temperature", "margin", "anchor", "class_key", "seed", "val_fraction", "patience", "monitor", "num_workers", "amp",
)  # fmt: skip
_SUMMARY_FIGURES = ("roc_auc", "tpr_at_fpr_1pct", "product_recall_at_1")


def _unfreeze(value: str | None) -> int | str | None:
    if value is None or value == "all":
        return value
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter("a number of blocks or 'all'", param_hint="--unfreeze") from None


@click.command()
@click.argument("manifests", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--split", help="Keep only rows whose 'split' column equals this (e.g. reference).")
@click.option(
    "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), help="Run directory [<data-dir>/training/<time>]."
)
@click.option("--resume", "resume_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Continue the interrupted run in this directory (from its last.pt); MANIFESTS are then optional.")  # fmt: skip
# Optimisation
@click.option("--epochs", type=int, help="Epochs (passes over the training photos) [5].")
@click.option("--batch-size", type=int, help="Photos per optimisation step [32].")
@click.option("--samples-per-class", type=int, help="Photos per class in a batch [4].")
@click.option("--lr", type=float, help="Peak learning rate of AdamW, warm-up then cosine decay [3e-4].")
@click.option("--weight-decay", type=float, help="AdamW weight decay [1e-4].")
@click.option("--warmup-fraction", type=float, help="Share of the steps spent warming up the learning rate [0.1].")
@click.option("--seed", type=int, help="Seed of the split, batches, augmentations and initialisation [0].")
# Model
@click.option("--image-size", type=int, help="Input size in pixels [the base model's].")
@click.option("--unfreeze", help="How many of the last blocks/stages train (plus the layers after them), or 'all' [3].")
@click.option("--bn", type=click.Choice(["frozen", "train"]), help="BatchNorm statistics: keep (frozen) or update [frozen].")
# Objective
@click.option("--loss", type=click.Choice(["supcon", "triplet"]), help="Supervised contrastive, or batch-hard triplet [supcon].")
@click.option("--temperature", type=float, help="Temperature of the supervised contrastive loss [0.1].")
@click.option("--margin", type=float, help="Margin of the triplet loss (cosine distance) [0.2].")
@click.option(
    "--anchor",
    type=float,
    help="Weight of the pull towards the base model's embedding (keeps unrelated photos far); 0: none [1].",
)
@click.option("--class-key", type=click.Choice(["product_label", "product"]),
              help="Classes: brand/product/label, or brand/product for retrieval only [product_label].")  # fmt: skip
# Validation
@click.option("--val-fraction", type=float, help="Share of photo GROUPS held out for validation; 0: none [0.2].")
@click.option("--patience", type=int, help="Epochs without a better validation figure before stopping [2].")
@click.option("--monitor", type=click.Choice(["auto", "roc_auc", "tpr_at_fpr_1pct", "product_recall_at_1"]),
              help="Validation figure for early stopping; auto: ROC-AUC, or product recall@1 with one label [auto].")  # fmt: skip
# Runtime
@click.option("--workers", "num_workers", type=int, help="Data-loading processes [min(2, cores)].")
@click.option("--amp/--no-amp", default=None, help="Mixed precision [on with a GPU, off on CPU].")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Data directory [env COUNTERFEIT_SCAN_DATA_DIR; ./data].")
@click.option("--model", help="Base open_clip architecture [env COUNTERFEIT_SCAN_MODEL; efficientnet-lite0].")
@click.option("--pretrained", help="Base pretrained tag [env COUNTERFEIT_SCAN_PRETRAINED; imagenet].")
@click.option("--checkpoint", type=click.Path(path_type=Path), help="Base checkpoint file [env COUNTERFEIT_SCAN_CHECKPOINT].")
@click.option("--model-cache-dir", type=click.Path(path_type=Path), help="Weights cache [env COUNTERFEIT_SCAN_MODEL_CACHE_DIR].")
@click.option("--device", help="auto, cpu or cuda[:N] [env COUNTERFEIT_SCAN_DEVICE].")
@click.option("--allow-random-weights", is_flag=True, default=None, help="Tests only: random base weights.")
def train(
    manifests: tuple[Path, ...],
    split: str | None,
    out_dir: Path | None,
    resume_dir: Path | None,
    unfreeze: str | None,
    **flags: Any,
) -> None:
    """Fine-tune the embedding model on labelled photos (path,brand,product,label[,group][,split] manifests).

    Photos of the same product and label are pulled together, authentic and counterfeit photos of one product pushed
    apart. Validation holds out whole photo groups and scores them like the service (10-NN vote). Writes best.pt (a
    checkpoint for --checkpoint), last.pt (resume state), metrics.jsonl, training_curves.png and report.json.
    """
    from training.finetune import FinetuneConfig, ResumeError, TrainingDataError, finetune, resume_settings

    given = {name: flags.pop(name) for name in _CONFIG_FLAGS if name in flags}
    given["unfreeze"] = _unfreeze(unfreeze)
    given = {name: value for name, value in given.items() if value is not None}
    settings = make_settings(**flags)
    try:
        if resume_dir is not None:
            saved, base_spec, saved_manifests, saved_split = resume_settings(resume_dir)
            if manifests and [m.resolve() for m in manifests] != [m.resolve() for m in saved_manifests]:
                raise click.UsageError("--resume continues the run's own manifests; leave MANIFESTS out")
            if flags.get("device"):
                given["device"] = settings.device
            config = FinetuneConfig.from_dict({**saved.as_dict(), **given})
            result = finetune(config, base_spec, saved_manifests, saved_split, resume_dir, resume=True)
        else:
            if not manifests:
                raise click.UsageError("give at least one MANIFEST (or --resume RUN_DIR)")
            config = FinetuneConfig(**{**given, "device": settings.device})
            out = out_dir or settings.data_dir / "training" / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            result = finetune(config, settings.model_spec(), list(manifests), split, out)
    except (TrainingDataError, ResumeError, ModelLoadError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    report = result.report
    for warning in report["data"]["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    if report["data"]["skipped_rows"]:
        click.echo(f"{len(report['data']['skipped_rows'])} manifest rows skipped; see report.json", err=True)
    click.echo(json.dumps(_summary(result.out_dir, report), indent=2))


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
