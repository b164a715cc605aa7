"""Training: fine-tuning, evaluation and calibration (see the issues that build on the spine)."""
