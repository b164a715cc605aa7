"""Metric-learning objectives on L2-normalised embeddings: supervised contrastive, and triplet with hard negatives."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from training.finetune.config import FinetuneConfig

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def supervised_contrastive_loss(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SupCon (Khosla et al. 2020): each photo is pulled towards every other photo of its class, against the batch.

    Anchors without a positive in the batch are left out; the result is the mean over the remaining anchors.
    """
    z = F.normalize(embeddings.float(), dim=1)
    n = z.shape[0]
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (labels[:, None] == labels[None, :]) & ~self_mask
    count = positive.sum(dim=1)
    has_positive = count > 0
    if not bool(has_positive.any()):
        return z.sum() * 0.0
    per_anchor = log_prob.masked_fill(~positive, 0.0).sum(dim=1)
    return -(per_anchor[has_positive] / count[has_positive]).mean()


def hard_triplet_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, families: torch.Tensor, margin: float = 0.2
) -> torch.Tensor:
    """Batch-hard triplet loss on cosine distance; negatives come from the other classes of the anchor's family
    (e.g. the counterfeit photos of the same product for an authentic anchor) whenever the batch has some."""
    z = F.normalize(embeddings.float(), dim=1)
    distance = 1.0 - z @ z.T
    n = z.shape[0]
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    positive = (labels[:, None] == labels[None, :]) & ~self_mask
    negative = labels[:, None] != labels[None, :]
    sibling = negative & (families[:, None] == families[None, :])
    candidates = torch.where(sibling.any(dim=1, keepdim=True), sibling, negative)
    hardest_positive = distance.masked_fill(~positive, float("-inf")).max(dim=1).values
    hardest_negative = distance.masked_fill(~candidates, float("inf")).min(dim=1).values
    valid = positive.any(dim=1) & candidates.any(dim=1)
    if not bool(valid.any()):
        return z.sum() * 0.0
    return F.relu(hardest_positive[valid] - hardest_negative[valid] + margin).mean()


def make_loss(config: FinetuneConfig, class_families: Sequence[int]) -> LossFn:
    """The loss named by `config.loss`; `class_families[c]` is the family (product) number of class `c`."""
    if config.loss == "supcon":
        temperature = config.temperature

        def supcon(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return supervised_contrastive_loss(embeddings, labels, temperature)

        return supcon
    family_table = torch.tensor(list(class_families), dtype=torch.long)
    margin = config.margin

    def triplet(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        families = family_table.to(labels.device)[labels]
        return hard_triplet_loss(embeddings, labels, families, margin)

    return triplet
