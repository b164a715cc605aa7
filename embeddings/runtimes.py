"""Runs a vision tower on a float32 NCHW batch: eager torch (GPU, training) or ONNX Runtime (CPU serving)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)


class Runner(Protocol):
    name: str

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


class TorchRunner:
    def __init__(self, visual: nn.Module, device: str) -> None:
        self.device = torch.device(device)
        self.visual = visual.to(self.device).eval()
        self.name = f"torch-{self.device.type}"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = self.visual(torch.from_numpy(batch).to(self.device))
        return np.asarray(out.float().cpu().numpy(), dtype=np.float32)


class OnnxRunner:
    def __init__(self, model_path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        self.name = "onnxruntime-cpu"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {"pixels": batch})[0], dtype=np.float32)


def export_onnx(visual: nn.Module, size: int, path: Path) -> Path:
    """Export the tower with a dynamic batch axis; written to a temp file then renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    dummy = torch.zeros(2, 3, size, size)
    torch.onnx.export(
        visual.cpu().eval(),
        (dummy,),
        str(tmp),
        input_names=["pixels"],
        output_names=["embedding"],
        dynamic_axes={"pixels": {0: "batch"}, "embedding": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    tmp.replace(path)
    return path


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def onnx_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True
