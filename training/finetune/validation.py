"""Validation the way the service scores: embed a catalog and queries, 10-NN similarity-weighted vote, evaluation figures."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from tqdm import tqdm

from embeddings.preprocess import PreprocessSpec
from training.evaluation.metrics import compute_metrics
from training.evaluation.records import COUNTERFEIT, LIKELY_AUTHENTIC, LIKELY_COUNTERFEIT, NEEDS_REVIEW, EvalRecord
from training.finetune.augment import eval_transform
from training.finetune.data import TrainImage
from training.finetune.loader import PhotoDataset, eval_loader

FloatArray = NDArray[np.float32]
FIGURES: Final = ("roc_auc", "pr_auc", "tpr_at_fpr_1pct", "tpr_at_fpr_5pct", "product_recall_at_1", "product_recall_at_5")
# The service's bands for an uncalibrated risk (Settings.counterfeit_threshold / authentic_threshold).
COUNTERFEIT_BAND: Final = 0.8
AUTHENTIC_BAND: Final = 0.2


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision on `device` when `dtype` is given; otherwise nothing."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def embed_photos(
    visual: nn.Module,
    images: Sequence[TrainImage],
    spec: PreprocessSpec,
    device: torch.device,
    *,
    batch_size: int = 32,
    num_workers: int = 0,
    amp_dtype: torch.dtype | None = None,
    show_progress: bool | None = False,
    description: str = "embed",
) -> FloatArray:
    """L2-normalised embeddings of `images`, preprocessed and decoded exactly as the service does (JPEG draft included)."""
    dataset = PhotoDataset([str(image.path) for image in images], [0] * len(images), eval_transform(spec), spec.size)
    was_training = visual.training
    visual.eval()
    parts: list[FloatArray] = []
    try:
        with torch.inference_mode(), autocast(device, amp_dtype):
            for pixels, _ in tqdm(
                eval_loader(dataset, batch_size, num_workers), desc=description, leave=False, disable=not show_progress
            ):
                out = visual(pixels.to(device, non_blocking=True)).float()
                parts.append(torch.nn.functional.normalize(out, dim=1).cpu().numpy().astype(np.float32))
    finally:
        visual.train(was_training)
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)


@dataclass(frozen=True)
class Vote:
    """Per query: the fake vote in [0, 1], and its k nearest catalog rows with their similarities (best first)."""

    scores: NDArray[np.float64]
    neighbours: NDArray[np.intp]
    similarities: NDArray[np.float32]


def knn_vote(
    catalog: FloatArray, catalog_fake: Sequence[bool], queries: FloatArray, k: int = 10, temperature: float = 0.05
) -> Vote:
    """The service's similarity-weighted vote: softmax over the k best similarities at `temperature`, share of fakes."""
    if len(catalog) == 0:
        raise ValueError("the catalog is empty")
    k = min(k, len(catalog))
    similarity = queries @ catalog.T
    top = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    top_sim = np.take_along_axis(similarity, top, axis=1)
    order = np.argsort(-top_sim, axis=1, kind="stable")
    neighbours = np.take_along_axis(top, order, axis=1)
    sims = np.take_along_axis(top_sim, order, axis=1)
    weights = np.exp((sims.astype(np.float64) - sims[:, :1]) / temperature)
    fake = np.asarray(catalog_fake, dtype=np.float64)[neighbours]
    scores = (weights * fake).sum(axis=1) / weights.sum(axis=1)
    return Vote(scores, neighbours.astype(np.intp), sims.astype(np.float32))


def vote_records(catalog: Sequence[TrainImage], queries: Sequence[TrainImage], vote: Vote) -> list[EvalRecord]:
    """Evaluation records of the queries: vote as score and risk, the service's uncalibrated verdict bands, matches."""
    records = []
    for i, query in enumerate(queries):
        score = float(vote.scores[i])
        if score >= COUNTERFEIT_BAND:
            verdict = LIKELY_COUNTERFEIT
        elif score <= AUTHENTIC_BAND:
            verdict = LIKELY_AUTHENTIC
        else:
            verdict = NEEDS_REVIEW
        matches = [
            {
                "image_id": str(catalog[j].path),
                "brand": catalog[j].brand,
                "product": catalog[j].product,
                "label": catalog[j].label,
                "similarity": float(s),
            }
            for j, s in zip(vote.neighbours[i], vote.similarities[i], strict=True)
        ]
        records.append(
            EvalRecord(
                listing=str(query.path),
                photos=[str(query.path)],
                truth=query.label,
                brand=query.brand,
                product=query.product,
                score=score,
                risk=score,
                calibrated=False,
                verdict=verdict,
                matches=matches,
                group=query.group,
            )
        )
    return records


def evaluate_vote(
    catalog: Sequence[TrainImage],
    catalog_vectors: FloatArray,
    queries: Sequence[TrainImage],
    query_vectors: FloatArray,
    *,
    k: int = 10,
    temperature: float = 0.05,
    n_bootstrap: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """compute_metrics over the queries' kNN votes, plus percentiles of each query's best similarity."""
    vote = knn_vote(catalog_vectors, [image.label == COUNTERFEIT for image in catalog], query_vectors, k, temperature)
    metrics = compute_metrics(vote_records(catalog, queries, vote), n_bootstrap=n_bootstrap, seed=seed)
    best = vote.similarities[:, 0].astype(np.float64)
    metrics["top_similarity_percentiles"] = {str(p): float(np.percentile(best, p)) for p in (5, 25, 50)}
    return metrics


def summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of a compute_metrics result (with intervals when it has them)."""
    out: dict[str, Any] = {name: metrics.get(name) for name in FIGURES}
    intervals = metrics.get("ci") or {}
    if any(intervals.get(name) for name in FIGURES):
        out["ci"] = {name: intervals.get(name) for name in FIGURES}
    out["n_queries"] = metrics.get("n_queries")
    if "top_similarity_percentiles" in metrics:
        out["top_similarity_percentiles"] = metrics["top_similarity_percentiles"]
    return out


def monitored(metrics: dict[str, Any], monitor: str) -> tuple[str, float | None]:
    """The figure early stopping watches: `monitor`, or for "auto" ROC-AUC when defined, else product recall@1."""
    if monitor == "auto":
        monitor = "roc_auc" if metrics.get("roc_auc") is not None else "product_recall_at_1"
    value = metrics.get(monitor)
    return monitor, None if value is None else float(value)
