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

from embeddings.detail import DetailTower
from embeddings.loading import HeadPhotos, LoadedVisual, load_visual
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
        """Every field, as scan records store it and the API shows it (`ModelOut` in service/api/schemas.py); once per
        scan, so a plain copy of the instance's fields rather than `dataclasses.asdict`'s recursive deep copy."""
        return dict(vars(self))


@dataclass(frozen=True)
class Embeddings:
    """One forward pass's outputs for n photos: unit retrieval vectors (search) and detail features (the head)."""

    vectors: np.ndarray
    details: np.ndarray

    def __len__(self) -> int:
        return len(self.vectors)

    def rows(self, start: int, stop: int) -> Embeddings:
        return Embeddings(self.vectors[start:stop], self.details[start:stop])


class ImageEmbedder:
    """Batched embedding of decoded RGB images with one runtime (ONNX Runtime on CPU, torch on GPU)."""

    def __init__(
        self, spec: ModelSpec, loaded: LoadedVisual, runner: Runner, fingerprint: str, dim: int, detail: tuple[str, int]
    ) -> None:
        self.spec = spec
        self.preprocess = loaded.preprocess
        self.default_match_threshold = loaded.match_threshold
        self._runner = runner
        self.info = ModelInfo(loaded.architecture, loaded.weights, fingerprint, dim, runner.name, loaded.random_weights)
        # The pooling recipe and width of the detail features; stored features of another layout are recomputed.
        self.detail_layout, self.detail_dim = detail
        # Labelled photos beyond the catalog that the authenticity head also learns from (`counterfeit-scan train`).
        self.head_photos: HeadPhotos | None = loaded.head_photos

    @property
    def input_size(self) -> int:
        return self.preprocess.size

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed images in batches of `spec.batch_size`; returns (n, dim) float32 rows of unit length."""
        return self.embed_images_with_detail(images).vectors

    def embed_images_with_detail(self, images: Sequence[Image.Image]) -> Embeddings:
        """Retrieval vectors and detail features of images, in batches of `spec.batch_size`."""
        vectors = np.empty((len(images), self.info.dim), dtype=np.float32)
        details = np.empty((len(images), self.detail_dim), dtype=np.float32)
        step = max(1, self.spec.batch_size)
        for start in range(0, len(images), step):
            chunk = images[start : start + step]
            out = self.embed_batch_with_detail(to_pixels(chunk, self.preprocess))
            vectors[start : start + len(chunk)] = out.vectors
            details[start : start + len(chunk)] = out.details
        return Embeddings(vectors, details)

    def embed_batch(self, batch: np.ndarray) -> np.ndarray:
        """Run a `(n, size, size, 3)` uint8 batch (`embeddings.preprocess.to_pixels`) through the model; unit rows out."""
        return self.embed_batch_with_detail(batch).vectors

    def embed_batch_with_detail(self, batch: np.ndarray) -> Embeddings:
        """`embed_batch`, with the detail features of the same forward pass."""
        if len(batch) == 0:
            return Embeddings(np.empty((0, self.info.dim), dtype=np.float32), np.empty((0, self.detail_dim), dtype=np.float32))
        if batch.dtype != np.uint8 or batch.shape[1:] != (self.input_size, self.input_size, 3):
            size = self.input_size
            raise ValueError(f"expected uint8 pixels of shape (n, {size}, {size}, 3), got {batch.dtype} {batch.shape}")
        vectors, details = self._runner(np.ascontiguousarray(batch))
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return Embeddings(np.asarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32), details)


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
    tower = DetailTower(loaded.visual)
    with torch.inference_mode():
        probe = torch.zeros(1, 3, loaded.preprocess.size, loaded.preprocess.size)
        embedding, detail = tower(probe)
        dim, detail_dim = int(embedding.shape[-1]), int(detail.shape[-1])
    model = PixelInput(tower, loaded.preprocess.mean, loaded.preprocess.std)
    runner: Runner
    if runtime == "onnx":
        directory = export_dir or Path(tempfile.mkdtemp(prefix="counterfeit-scan-onnx-"))
        # -uint8: the graph takes pixels; the detail layout names its second output
        path = directory / f"{loaded.architecture}-{fingerprint[:16]}-uint8-{tower.layout}.onnx"
        if not path.is_file():
            log.info("exporting %s to ONNX at %s", spec.name, path)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                export_onnx(model, loaded.preprocess.size, path)
        runner = OnnxRunner(path, spec.threads)
    else:
        runner = TorchRunner(model, device, compile_model=spec.compile)
    return ImageEmbedder(spec, loaded, runner, fingerprint, dim, (tower.layout, detail_dim))
