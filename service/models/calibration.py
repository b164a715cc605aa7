"""Reads a calibrator written by `counterfeit-scan calibrate` (JSON, numpy only) and applies it to listing features."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CALIBRATOR_FORMAT = "counterfeit-scan/calibrator-v1"


class CalibratorError(ValueError):
    """The calibrator file is unreadable or does not fit the running model."""


@dataclass(frozen=True)
class LoadedCalibrator:
    spec: dict[str, Any]
    path: Path
    mtime: float

    @property
    def likely_counterfeit(self) -> float:
        return float(self.spec["thresholds"]["likely_counterfeit"])

    @property
    def likely_authentic(self) -> float:
        return float(self.spec["thresholds"]["likely_authentic"])

    def probability(self, features: dict[str, float]) -> float:
        """P(counterfeit) for one listing's features."""
        if self.spec["method"] == "isotonic":
            block = self.spec["isotonic"]
            return float(np.interp(features[block["feature"]], block["x"], block["y"]))
        block = self.spec["platt"]
        x = np.array([features[name] for name in self.spec["features"]], dtype=np.float64)
        z = float(((x - np.asarray(block["mean"])) / np.asarray(block["scale"])) @ np.asarray(block["coef"]))
        z += float(block["intercept"])
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))

    def summary(self) -> dict[str, Any]:
        return {
            "method": self.spec["method"],
            "fitted_at": self.spec.get("fitted_at"),
            "index_version_at_fit": self.spec.get("index_version"),
            "thresholds": self.spec["thresholds"],
            "targets": {k: self.spec.get("fit", {}).get(k) for k in ("target_fpr", "target_miss_rate")},
        }


def calibrator_path(directory: Path, fingerprint: str) -> Path:
    return directory / f"{fingerprint[:16]}.json"


def load_calibrator(path: Path, fingerprint: str, feature_names: tuple[str, ...]) -> LoadedCalibrator | None:
    """The calibrator at `path`, or None when there is none. Raises CalibratorError when it cannot be used."""
    if not path.is_file():
        return None
    try:
        spec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CalibratorError(f"calibrator {path} is unreadable: {exc}") from exc
    if spec.get("format") != CALIBRATOR_FORMAT:
        raise CalibratorError(f"calibrator {path} is not in format {CALIBRATOR_FORMAT}")
    if spec.get("model_fingerprint") != fingerprint:
        raise CalibratorError(f"calibrator {path} was fitted for another model ({spec.get('model_fingerprint')})")
    unknown = set(spec.get("features", ())) - set(feature_names)
    if unknown or spec.get("method") not in ("platt", "isotonic"):
        raise CalibratorError(f"calibrator {path} uses unknown features {sorted(unknown)} or method {spec.get('method')}")
    return LoadedCalibrator(spec, path, path.stat().st_mtime)


def save_calibrator(path: Path, spec: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(spec, indent=2))
    tmp.replace(path)
