"""Fine-tuning of the embedding model: metric learning on labelled catalog photos, validated like the service scores.

from training.finetune import FinetuneConfig, finetune
result = finetune(FinetuneConfig(epochs=8), ModelSpec(), [Path("manifest.csv")], "reference", Path("runs/1"))
load_visual(ModelSpec(checkpoint=result.best_checkpoint))  # the service serves it like any checkpoint
"""

from training.finetune.config import FinetuneConfig
from training.finetune.data import TrainImage, TrainingDataError, read_training_data, split_by_group
from training.finetune.state import ResumeError
from training.finetune.trainer import FinetuneResult, finetune, resume_settings
from training.finetune.validation import knn_vote

__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "ResumeError",
    "TrainImage",
    "TrainingDataError",
    "finetune",
    "knn_vote",
    "read_training_data",
    "resume_settings",
    "split_by_group",
]
