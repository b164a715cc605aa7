"""Datasets, the class-balanced batch sampler and seeded DataLoaders."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from embeddings.decode import ImageLimits, decode_image
from training.finetune.augment import Transform

Batch = tuple[torch.Tensor, int]


class PhotoDataset(Dataset[Batch]):
    """Photos decoded with the product's decoder (size limits, EXIF orientation, RGB), then transformed."""

    def __init__(self, paths: Sequence[str], labels: Sequence[int], transform: Transform, draft_size: int | None = None) -> None:
        if len(paths) != len(labels):
            raise ValueError("paths and labels differ in length")
        self.paths = list(paths)
        self.labels = list(labels)
        self.transform = transform
        self.draft_size = draft_size
        self.limits = ImageLimits()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Batch:
        with open(self.paths[index], "rb") as fh:
            decoded = decode_image(fh.read(), self.limits, self.draft_size)
        return self.transform(decoded.image), self.labels[index]


def epoch_seed(seed: int, epoch: int) -> int:
    """One seed per (run seed, epoch): an epoch's batches and augmentations do not depend on earlier epochs."""
    return (seed * 1_000_003 + epoch * 7_919) % (2**31 - 1)


class ClassBalancedBatchSampler(Sampler[list[int]]):
    """Batches of several classes with several photos each, so every photo has positives and hard negatives.

    Each batch holds up to `batch_size // samples_per_class` classes; classes of one family (the authentic and the
    counterfeit class of one product) are drawn together, so the hardest negatives, the other label of the same
    product, are in the batch. With fewer classes than that, every class is in every batch with more photos each.
    Within a class, photos are drawn round-robin over its groups (photo sessions) in a shuffled order, so positive
    pairs are mostly different sessions rather than near-copies. Batches depend only on (seed, epoch).
    """

    def __init__(
        self,
        labels: Sequence[int],
        families: Sequence[str],
        groups: Sequence[str],
        batch_size: int,
        samples_per_class: int,
        seed: int,
        epoch: int,
        steps: int | None = None,
    ) -> None:
        self.labels = list(labels)
        self.batch_size = batch_size
        self.samples_per_class = samples_per_class
        self.seed = seed
        self.epoch = epoch
        self.steps = steps if steps is not None else max(1, -(-len(self.labels) // batch_size))
        self._members: dict[int, list[int]] = defaultdict(list)
        self._family: dict[int, str] = {}
        for index, (label, family) in enumerate(zip(self.labels, families, strict=True)):
            self._members[label].append(index)
            self._family[label] = family
        self._groups = list(groups)
        if len(self._members) < 2:
            raise ValueError("class-balanced batches need at least two classes")

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(epoch_seed(self.seed, self.epoch))
        streams = {label: self._stream(members, rng) for label, members in sorted(self._members.items())}
        classes_per_batch = max(2, min(len(streams), self.batch_size // self.samples_per_class))
        per_class = self.batch_size // classes_per_batch
        order = self._class_cycle(rng)
        for _ in range(self.steps):
            chosen: list[int] = []
            while len(chosen) < classes_per_batch:
                label = next(order)
                if label not in chosen:
                    chosen.append(label)
            yield [next(streams[label]) for label in chosen for _ in range(per_class)]

    def _class_cycle(self, rng: random.Random) -> Iterator[int]:
        """Classes in an endless shuffled order that keeps each family's classes next to each other."""
        by_family: dict[str, list[int]] = defaultdict(list)
        for label, family in sorted(self._family.items()):
            by_family[family].append(label)
        while True:
            families = sorted(by_family)
            rng.shuffle(families)
            for family in families:
                labels = list(by_family[family])
                rng.shuffle(labels)
                yield from labels

    def _stream(self, members: list[int], rng: random.Random) -> Iterator[int]:
        """A class's photos, endlessly, one group after another in a shuffled round-robin."""
        by_group: dict[str, list[int]] = defaultdict(list)
        for index in members:
            by_group[self._groups[index]].append(index)
        while True:
            queues = []
            for group in sorted(by_group):
                photos = list(by_group[group])
                rng.shuffle(photos)
                queues.append(photos)
            rng.shuffle(queues)
            while any(queues):
                for queue in queues:
                    if queue:
                        yield queue.pop()


def seed_worker(worker_id: int) -> None:
    """Seed numpy and random in a DataLoader worker from the seed torch gave it (torch's own RNG is already seeded)."""
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def train_loader(dataset: PhotoDataset, sampler: ClassBalancedBatchSampler, num_workers: int, seed: int) -> DataLoader[Batch]:
    """A DataLoader over class-balanced batches whose worker seeds follow from `seed`."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        worker_init_fn=seed_worker,
        generator=generator,
        pin_memory=torch.cuda.is_available(),
    )


def eval_loader(dataset: PhotoDataset, batch_size: int, num_workers: int) -> DataLoader[Batch]:
    """A DataLoader that keeps the photos' order (evaluation transforms are deterministic)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
