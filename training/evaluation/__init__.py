"""Evaluation of the scorer on labelled query listings: figures with bootstrap intervals, plots and an HTML report."""

from training.evaluation.metrics import compute_metrics
from training.evaluation.records import EvalRecord

__all__ = ["EvalRecord", "compute_metrics"]
