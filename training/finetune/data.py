"""Training photos from manifests, their classes, and a validation split that keeps photo groups whole."""

from __future__ import annotations

import hashlib
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reference_catalog import ManifestError, read_manifest
from training.finetune.config import ClassKey


class TrainingDataError(ValueError):
    """The manifests give nothing usable to train on (no rows, a single class, unreadable files)."""


@dataclass(frozen=True)
class TrainImage:
    """One labelled photo; `group` names its photo session (near-identical copies share a group).

    `group` is made unique across manifests; `shoot` is the manifest's own `group` value (None when empty), the name
    the catalog gives a shoot, and `where` says which manifest line the photo came from.
    """

    path: Path
    brand: str
    product: str
    label: str
    group: str
    shoot: str | None = None
    where: str = ""

    def class_name(self, key: ClassKey) -> str:
        """The class this photo trains as: brand/product/label, or brand/product for `key="product"`."""
        return f"{self.brand}/{self.product}" if key == "product" else f"{self.brand}/{self.product}/{self.label}"

    def family(self) -> str:
        """Classes of one product (authentic and counterfeit) share a family; batches keep families together."""
        return f"{self.brand}/{self.product}"


@dataclass
class TrainingData:
    """The photos read from manifests, with what was skipped and why."""

    images: list[TrainImage]
    manifests: list[dict[str, Any]]
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_training_data(manifests: Sequence[Path], split: str | None = None) -> TrainingData:
    """Read labelled photos (`path,brand,product,label[,group][,split]`) from one or more manifests.

    Rows without a `group` each form their own group, with a warning: near-duplicate photos could then land on both
    sides of the validation split. Bad rows and missing files are skipped and listed; a manifest that cannot be read
    at all raises TrainingDataError.
    """
    images: list[TrainImage] = []
    described: list[dict[str, Any]] = []
    skipped: list[str] = []
    ungrouped = 0
    for manifest in manifests:
        try:
            read = read_manifest(manifest, split)
        except ManifestError as exc:
            raise TrainingDataError(str(exc)) from exc
        described.append({"path": str(manifest), "sha256": file_sha256(manifest), "split": split, "rows": len(read.rows)})
        skipped.extend(f"{manifest.name} line {line}: {reason}" for line, reason in read.errors)
        for row in read.rows:
            if not row.path.is_file():
                skipped.append(f"{manifest.name} line {row.line}: no such file {row.path}")
                continue
            shoot = (row.extra.get("group") or "").strip() or None
            if shoot is None:
                ungrouped += 1
                group = f"{manifest.resolve()}::{row.path}"
            else:
                group = f"{manifest.resolve()}::{shoot}"  # group ids are only unique within their manifest
            where = f"{manifest.name} line {row.line}"
            images.append(TrainImage(row.path, row.brand, row.product, row.label, group, shoot, where))
    warnings = []
    if ungrouped:
        warnings.append(
            f"{ungrouped} photos have no 'group' column value: each is its own group, so near-duplicates of one photo "
            "may land in both train and validation and flatter the validation figures"
        )
    return TrainingData(images, described, skipped, warnings)


def split_by_group(images: Sequence[TrainImage], val_fraction: float, seed: int, key: ClassKey) -> tuple[list[int], list[int]]:
    """Indices of train and validation photos; whole groups go to one side, stratified by class.

    For each class, `val_fraction` of its groups (rounded, at least one) are held out, as long as the class keeps at
    least one group for training; a class with a single group stays wholly in training. A group's class is the most
    common class among its photos.
    """
    if val_fraction <= 0:
        return list(range(len(images))), []
    members: dict[str, list[int]] = defaultdict(list)
    for i, image in enumerate(images):
        members[image.group].append(i)
    groups_of_class: dict[str, list[str]] = defaultdict(list)
    for group, rows in members.items():
        majority = Counter(images[i].class_name(key) for i in rows).most_common(1)[0][0]
        groups_of_class[majority].append(group)
    rng = random.Random(seed)
    held_out: set[str] = set()
    for name in sorted(groups_of_class):
        groups = sorted(groups_of_class[name])
        rng.shuffle(groups)
        if len(groups) < 2:
            continue
        count = min(len(groups) - 1, max(1, round(val_fraction * len(groups))))
        held_out.update(groups[:count])
    train = [i for i, image in enumerate(images) if image.group not in held_out]
    val = [i for i, image in enumerate(images) if image.group in held_out]
    return train, val


def class_index(images: Sequence[TrainImage], key: ClassKey) -> tuple[list[str], list[int]]:
    """Sorted class names and each photo's class number."""
    names = sorted({image.class_name(key) for image in images})
    number = {name: i for i, name in enumerate(names)}
    return names, [number[image.class_name(key)] for image in images]


def describe(images: Sequence[TrainImage], key: ClassKey) -> dict[str, Any]:
    """Counts of photos, groups and photos per class, for reports."""
    return {
        "images": len(images),
        "groups": len({image.group for image in images}),
        "classes": dict(sorted(Counter(image.class_name(key) for image in images).items())),
    }
