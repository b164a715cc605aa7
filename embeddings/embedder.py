"""ImageEmbedder: images in, L2-normalised float32 vectors out, with a fingerprint of the weights."""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from embeddings.loading import LoadedVisual, load_visual
from embeddings.preprocess import PreprocessSpec, to_pixels
from embeddings.runtimes import OnnxRunner, PixelInput, Runner, TorchRunner, export_onnx, onnx_available, resolve_device
from embeddings.spec import ModelSpec

log = logging.getLogger(__name__)


def model_fingerprint(architecture: str, visual: nn.Module, preprocess: PreprocessSpec) -> str:
    """sha256 over the architecture, the preprocessing and every weight tensor: equal iff the embedding is."""
    digest = hashlib.sha256()
    digest.update(architecture.encode())
    digest.update(json.dumps(preprocess.as_dict(), sort_keys=True).encode())
    for key, tensor in sorted(visual.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelInfo:
    """What a scan record and an index store about the model that made a vector."""

    architecture: str
    weights: str
    fingerprint: str
    dim: int
    runtime: str
    random_weights: bool

    @property
    def short_id(self) -> str:
        return f"{self.architecture}@{self.fingerprint[:12]}"

    def as_dict(self) -> dict[str, object]:
        return {
            "architecture": self.architecture,
            "weights": self.weights,
            "fingerprint": self.fingerprint,
            "dim": self.dim,
            "runtime": self.runtime,
            "random_weights": self.random_weights,
        }


class ImageEmbedder:
    """Batched embedding of decoded RGB images with one runtime (ONNX Runtime on CPU, torch on GPU)."""

    def __init__(self, spec: ModelSpec, loaded: LoadedVisual, runner: Runner, fingerprint: str, dim: int) -> None:
        self.spec = spec
        self.preprocess = loaded.preprocess
        self.default_match_threshold = loaded.match_threshold
        self._runner = runner
        self.info = ModelInfo(loaded.architecture, loaded.weights, fingerprint, dim, runner.name, loaded.random_weights)

    @property
    def input_size(self) -> int:
        return self.preprocess.size

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed images in batches of `spec.batch_size`; returns (n, dim) float32 rows of unit length."""
        out = np.empty((len(images), self.info.dim), dtype=np.float32)
        step = max(1, self.spec.batch_size)
        for start in range(0, len(images), step):
            chunk = images[start : start + step]
            out[start : start + len(chunk)] = self.embed_batch(to_pixels(chunk, self.preprocess))
        return out

    def embed_batch(self, batch: np.ndarray) -> np.ndarray:
        """Run a `(n, size, size, 3)` uint8 batch (`embeddings.preprocess.to_pixels`) through the model; unit rows out."""
        if len(batch) == 0:
            return np.empty((0, self.info.dim), dtype=np.float32)
        if batch.dtype != np.uint8 or batch.shape[1:] != (self.input_size, self.input_size, 3):
            size = self.input_size
            raise ValueError(f"expected uint8 pixels of shape (n, {size}, {size}, 3), got {batch.dtype} {batch.shape}")
        vectors = self._runner(np.ascontiguousarray(batch))
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.asarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


def load_embedder(spec: ModelSpec, export_dir: Path | None = None) -> ImageEmbedder:
    """Load the model in `spec` and pick its runtime; ONNX exports are cached in `export_dir` by fingerprint."""
    if spec.threads > 0:
        torch.set_num_threads(spec.threads)
    loaded = load_visual(spec)
    fingerprint = model_fingerprint(loaded.architecture, loaded.visual, loaded.preprocess)
    device = resolve_device(spec.device)
    runtime = spec.runtime
    if runtime == "auto":
        runtime = "onnx" if device == "cpu" and onnx_available() else "torch"
    with torch.inference_mode():
        probe = torch.zeros(1, 3, loaded.preprocess.size, loaded.preprocess.size)
        dim = int(loaded.visual(probe).shape[-1])
    model = PixelInput(loaded.visual, loaded.preprocess.mean, loaded.preprocess.std)
    runner: Runner
    if runtime == "onnx":
        directory = export_dir or Path(tempfile.mkdtemp(prefix="counterfeit-scan-onnx-"))
        path = directory / f"{loaded.architecture}-{fingerprint[:16]}-uint8.onnx"  # -uint8: the graph takes pixels
        if not path.is_file():
            log.info("exporting %s to ONNX at %s", spec.name, path)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                export_onnx(model, loaded.preprocess.size, path)
        runner = OnnxRunner(path, spec.threads)
    else:
        runner = TorchRunner(model, device, compile_model=spec.compile)
    return ImageEmbedder(spec, loaded, runner, fingerprint, dim)
