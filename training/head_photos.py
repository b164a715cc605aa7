"""Labelled photos for the authenticity head, carried by a checkpoint (`counterfeit-scan train`).

The service fits its heads (`embeddings/authenticity.py`) on the catalog's labelled photos plus the photos the served
checkpoint carries (its `head_photos`), so photos that should not be search references (a brand's past takedowns, test
purchases) still teach the head. `build_head_checkpoint` writes the base model's weights unchanged (same fingerprint)
with the detail features of such photos; `attach_head_photos` adds them to a fine-tuned checkpoint.

Photos are decoded and embedded as the service does with its catalog: the product's decoder under the settings' size
limits, JPEGs drafted at the model's input size, then `embed_images_with_detail`. A photo's shoot for the heads'
grouped cross-validation is the manifest's `group` value, the name the catalog gives shoots too (so a shoot split
between the catalog and these photos stays whole); a photo without one is its own shoot.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from tqdm import tqdm

from embeddings.authenticity import HeadOptions, HeadSet, LabelledPhotos, fit_heads
from embeddings.decode import DecodedImage, ImageLimits, decode_image
from embeddings.embedder import ImageEmbedder, load_embedder, model_fingerprint
from embeddings.errors import ImageRejected
from embeddings.loading import CHECKPOINT_FORMAT, load_visual, save_checkpoint
from embeddings.spec import ModelSpec
from training.finetune.data import TrainImage, TrainingDataError, read_training_data
from training.finetune.outputs import write_report
from training.finetune.provenance import code_version

HEAD_CHECKPOINT: Final = "checkpoint.pt"
CHUNK: Final = 64  # photos decoded and embedded at a time (bounds the memory of decoded images)
CV_NOTE: Final = (
    "grouped cross-validation (folds keep each shoot whole) of heads fitted on these photos alone; the service fits "
    "its heads on these photos plus the catalog's labelled photos"
)


@dataclass(frozen=True)
class EmbeddedPhotos:
    """Detail features of the usable photos, the sha256 of each photo's bytes, and the photos left out with why."""

    photos: LabelledPhotos
    sha256: tuple[str, ...]
    skipped: tuple[str, ...]


@dataclass(frozen=True)
class HeadPhotosResult:
    """What `build_head_checkpoint` / `attach_head_photos` wrote; `report` is also in the run's report.json."""

    checkpoint: Path | None
    report: dict[str, Any]


def shoot_of(image: TrainImage) -> str:
    """The photo's shoot for grouped cross-validation: the manifest's `group`, else the photo alone."""
    return image.shoot or f"image:{image.path}"


def read_photos(manifests: Sequence[Path], split: str | None) -> tuple[list[TrainImage], list[str], list[dict[str, Any]]]:
    """The labelled photos of the manifests (rows of `split` when given), the rows skipped, and the manifests read.

    Raises TrainingDataError when a manifest cannot be read at all, or no row is usable."""
    data = read_training_data(manifests, split)
    if not data.images:
        first = f" (first problem: {data.skipped[0]})" if data.skipped else ""
        where = f" for split {split!r}" if split else ""
        raise TrainingDataError(f"no usable labelled photos in the manifests{where}{first}")
    return data.images, list(data.skipped), data.manifests


def embed_photos(
    embedder: ImageEmbedder,
    images: Sequence[TrainImage],
    limits: ImageLimits,
    *,
    exclude: Mapping[str, str] | None = None,
    show_progress: bool = False,
) -> EmbeddedPhotos:
    """Decode and embed `images` like the service embeds catalog photos; unreadable or undecodable photos, repeats
    of one photo's bytes, and photos whose sha256 is in `exclude` (sha256 -> why) are skipped and listed."""
    exclude = exclude or {}
    seen: dict[str, TrainImage] = {}
    kept: list[TrainImage] = []
    sha256: list[str] = []
    parts: list[np.ndarray] = []
    skipped: list[str] = []
    bar = tqdm(total=len(images), desc="head photos", unit="img", disable=not show_progress)
    for start in range(0, len(images), CHUNK):
        decoded: list[DecodedImage] = []
        for image in images[start : start + CHUNK]:
            where = image.where or str(image.path)
            try:
                photo = decode_image(image.path.read_bytes(), limits, embedder.input_size)
            except OSError as exc:
                skipped.append(f"{where}: cannot read {image.path}: {exc.strerror or exc}")
                continue
            except ImageRejected as exc:
                skipped.append(f"{where}: {image.path.name}: {exc}")
                continue
            if photo.sha256 in exclude:
                skipped.append(f"{where}: {image.path.name} is {exclude[photo.sha256]}")
                continue
            first = seen.get(photo.sha256)
            if first is not None:
                conflict = f" labelled {first.label}, kept with that label" if first.label != image.label else ""
                skipped.append(f"{where}: {image.path.name} is the same photo as {first.where or first.path}{conflict}")
                continue
            seen[photo.sha256] = image
            kept.append(image)
            sha256.append(photo.sha256)
            decoded.append(photo)
        if decoded:
            parts.append(embedder.embed_images_with_detail([photo.image for photo in decoded]).details)
        bar.update(min(CHUNK, len(images) - start))
    bar.close()
    features = np.concatenate(parts) if parts else np.empty((0, embedder.detail_dim), dtype=np.float32)
    photos = LabelledPhotos(
        np.asarray(features, dtype=np.float32),
        np.array([image.label == "counterfeit" for image in kept], dtype=bool),
        tuple(shoot_of(image) for image in kept),
        tuple(image.brand for image in kept),
        tuple(image.product for image in kept),
        embedder.detail_layout,
    )
    return EmbeddedPhotos(photos, tuple(sha256), tuple(skipped))


def describe_photos(photos: LabelledPhotos) -> dict[str, Any]:
    """Counts of photos, labels and shoots, overall and per brand."""

    def counts(rows: np.ndarray) -> dict[str, int]:
        fake = int(photos.is_counterfeit[rows].sum())
        return {
            "photos": len(rows),
            "authentic": len(rows) - fake,
            "counterfeit": fake,
            "groups": len({photos.groups[i] for i in rows}),
        }

    brands = np.asarray(photos.brands, dtype=object)
    return {
        **counts(np.arange(len(photos))),
        "by_brand": {brand: counts(np.flatnonzero(brands == brand)) for brand in sorted(set(photos.brands))},
    }


def head_figures(heads: HeadSet) -> dict[str, Any]:
    """Per head (`FittedHead.describe`: its scope, training counts, out-of-fold figures), and the brands that got no
    head, with why."""
    scopes: dict[str, Any] = {}
    for key in sorted(heads.heads, key=str):
        described = dict(heads.heads[key].describe())
        scopes[str(described.pop("scope", key))] = described
    return {"note": CV_NOTE, "heads": scopes, "without_a_head": dict(sorted(heads.skipped.items()))}


def checkpoint_metadata(path: Path) -> dict[str, Any] | None:
    """The metadata of one of our checkpoints (None for other files)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        return None
    metadata = payload.get("metadata")
    return dict(metadata) if isinstance(metadata, dict) else {}


def _carried_sha256(metadata: Mapping[str, Any] | None, carried: LabelledPhotos | None) -> list[str | None]:
    """The sha256 of each photo a base checkpoint carries, when its metadata lists them (None where unknown)."""
    if carried is None:
        return []
    listed = ((metadata or {}).get("head_photos") or {}).get("sha256")
    if isinstance(listed, list) and len(listed) == len(carried):
        return [str(value) if value else None for value in listed]
    return [None] * len(carried)


def _save(path: Path, spec: ModelSpec, embedder: ImageEmbedder, photos: LabelledPhotos, metadata: dict[str, Any]) -> str:
    """Write the weights of `spec` with `photos` to `path`; returns the fingerprint, checked to be the embedder's (the
    features were made by exactly these weights)."""
    loaded = load_visual(spec)
    fingerprint = model_fingerprint(loaded.architecture, loaded.visual, loaded.preprocess)
    if fingerprint != embedder.info.fingerprint:
        raise ValueError(f"the weights of {spec.checkpoint or spec.name} changed while their detail features were computed")
    save_checkpoint(path, loaded.architecture, loaded, metadata, head_photos=photos)
    return fingerprint


def _photo_metadata(
    manifests: list[dict[str, Any]], split: str | None, photos: LabelledPhotos, sha256: Sequence[str | None], added: int
) -> dict[str, Any]:
    return {
        "manifests": manifests,
        "split": split,
        "count": len(photos),
        "added": added,
        "carried_from_base": len(photos) - added,
        "layout": photos.layout,
        "sha256": list(sha256),
        "digest": photos.digest(),
    }


def build_head_checkpoint(
    spec: ModelSpec,
    manifests: Sequence[Path],
    split: str | None,
    out_dir: Path,
    *,
    limits: ImageLimits,
    options: HeadOptions,
    export_dir: Path | None = None,
    show_progress: bool = False,
) -> HeadPhotosResult:
    """Write `out_dir`/checkpoint.pt: the weights of `spec`, unchanged, carrying the detail features of the manifests'
    labelled photos (plus those a base checkpoint already carries), and report.json.

    Raises TrainingDataError when no photo is usable, ModelLoadError when the model cannot be loaded."""
    images, skipped, described = read_photos(manifests, split)
    embedder = load_embedder(spec, export_dir)
    base_metadata = checkpoint_metadata(Path(spec.checkpoint)) if spec.checkpoint is not None else None
    carried = embedder.head_photos
    dropped: list[str] = []
    if carried is not None and (carried.layout != embedder.detail_layout or carried.features.shape[1] != embedder.detail_dim):
        dropped.append(
            f"the base checkpoint's {len(carried)} labelled photos have detail features of layout {carried.layout!r}, not "
            f"{embedder.detail_layout!r} (a newer version computes them differently): they are dropped; give their "
            "manifests again to keep them"
        )
        carried = None
    carried_sha256 = _carried_sha256(base_metadata, carried)
    exclude = {sha: "already carried by the base checkpoint" for sha in carried_sha256 if sha}
    new = embed_photos(embedder, images, limits, exclude=exclude, show_progress=show_progress)
    skipped.extend(new.skipped)
    if len(new.photos) == 0:
        raise TrainingDataError(
            f"none of the {len(images)} labelled photos could be used (first problem: {new.skipped[0]}); no checkpoint written"
        )
    photos = carried + new.photos if carried is not None else new.photos
    sha256 = [*carried_sha256, *new.sha256]
    warnings = dropped + _warnings(images, embedder, len(carried) if carried is not None else 0)
    heads = fit_heads(photos, options, fingerprint=embedder.info.fingerprint, catalog_revision=0, n_extra_photos=len(photos))
    figures = head_figures(heads)
    base_model = {
        "architecture": embedder.info.architecture,
        "weights": embedder.info.weights,
        "fingerprint": embedder.info.fingerprint,
        "random_weights": embedder.info.random_weights,
        "checkpoint": str(spec.checkpoint) if spec.checkpoint is not None else None,
    }
    metadata = {
        "kind": "base weights with labelled photos for the authenticity head",
        "base_model": base_model,
        "base_metadata": base_metadata,
        "head_photos": _photo_metadata(described, split, photos, sha256, len(new.photos)),
        "head_cross_validation": figures,
        "code_version": code_version(),
        "created": datetime.now(UTC).isoformat(),
    }
    path = out_dir / HEAD_CHECKPOINT
    fingerprint = _save(path, spec, embedder, photos, metadata)
    report = {
        "backbone": "frozen",
        "out_dir": str(out_dir),
        "checkpoint": str(path),
        "fingerprint": fingerprint,
        "base_model": base_model,
        "head_photos": {"added": len(new.photos), "carried_from_base": len(photos) - len(new.photos), **describe_photos(photos)},
        "head_cross_validation": figures,
        "skipped_rows": skipped,
        "warnings": warnings,
        "manifests": described,
        "next_step": f"counterfeit-scan model activate {path}",
        "code_version": metadata["code_version"],
        "created": metadata["created"],
    }
    write_report(out_dir, report)
    return HeadPhotosResult(path, report)


def attach_head_photos(
    checkpoint: Path,
    spec: ModelSpec,
    manifests: Sequence[Path],
    split: str | None,
    *,
    limits: ImageLimits,
    options: HeadOptions,
    export_dir: Path | None = None,
    show_progress: bool = False,
) -> HeadPhotosResult:
    """Add the detail features of the manifests' labelled photos, computed with the weights in `checkpoint` (a
    fine-tuned one), to that checkpoint; its metadata and weights stay as they are. `spec` gives the runtime and
    device (its `checkpoint` is replaced). Returns the checkpoint (None when no photo was usable) and a report."""
    spec = replace(spec, checkpoint=checkpoint)
    images, skipped, described = read_photos(manifests, split)
    embedder = load_embedder(spec, export_dir)
    new = embed_photos(embedder, images, limits, show_progress=show_progress)
    skipped.extend(new.skipped)
    report: dict[str, Any] = {"skipped_rows": skipped, "warnings": _warnings(images, embedder, 0)}
    if len(new.photos) == 0:
        report["warnings"].append("no photo could be used for the authenticity head: the checkpoint carries none")
        return HeadPhotosResult(None, report)
    heads = fit_heads(
        new.photos, options, fingerprint=embedder.info.fingerprint, catalog_revision=0, n_extra_photos=len(new.photos)
    )
    figures = head_figures(heads)
    figures["note"] += (
        "; the backbone was fine-tuned on these same photos, so these figures are optimistic: compare backbones with "
        "`counterfeit-scan evaluate` on photos neither saw"
    )
    metadata = checkpoint_metadata(checkpoint) or {}
    metadata["head_photos"] = _photo_metadata(described, split, new.photos, new.sha256, len(new.photos))
    metadata["head_cross_validation"] = figures
    _save(checkpoint, spec, embedder, new.photos, metadata)
    report.update(
        head_photos={"added": len(new.photos), "carried_from_base": 0, **describe_photos(new.photos)},
        head_cross_validation=figures,
    )
    return HeadPhotosResult(checkpoint, report)


def _warnings(images: Sequence[TrainImage], embedder: ImageEmbedder, carried: int) -> list[str]:
    out = []
    ungrouped = sum(1 for image in images if image.shoot is None)
    if ungrouped:
        out.append(
            f"{ungrouped} photos have no 'group' column value: each is its own shoot, so near-copies from one shoot "
            "can fall on both sides of a cross-validation fold and flatter the head's figures"
        )
    if carried:
        out.append(f"kept the {carried} labelled photos the base checkpoint already carries; the new photos are added to them")
    if embedder.info.random_weights:
        out.append("the base model has RANDOM weights (tests only): the detail features and figures are meaningless")
    labels = Counter(image.label for image in images)
    if len(labels) == 1:
        out.append(
            f"every photo is labelled {next(iter(labels))}: no head can be fitted on these photos alone, so there are no "
            "figures; the service's heads take the other label from the catalog's photos"
        )
    return out
