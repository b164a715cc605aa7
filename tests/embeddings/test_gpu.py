"""The GPU path: torch in half precision, channels-last, uint8 pixels staged through pinned memory and normalised on
the device, optionally compiled; and the service scanning on it.

Skipped where no CUDA device is present (CI, the 2-core build machine). `benchmarks/gpu/run.sh` runs these first on
a lent GPU machine, before its measurements. Each compares the GPU with the CPU on the same weights and photos: fp16
changes the vectors in the third decimal, never the nearest catalog image.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from embeddings import ImageEmbedder, ImageLimits, decode_image, load_embedder
from embeddings.batch_sizing import GPU_BATCH_CEILING, batch_ceiling, batch_rates, largest_fast_batch
from embeddings.preprocess import to_pixels
from service.app import create_app
from service.core import ServiceCore
from tests import imaging
from tests.helpers import add_reference, scan, tiny_settings

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device: the GPU path is tested where one is lent (benchmarks/gpu/run.sh)"
)


def embedder_on(tmp_path: Path, device: str, **settings: Any) -> ImageEmbedder:
    spec = tiny_settings(tmp_path / "data", device=device, runtime="torch", **settings).model_spec()
    return load_embedder(spec, tmp_path / "exports")


def photo_pixels(embedder: ImageEmbedder, seeds: range) -> np.ndarray:
    images = [decode_image(imaging.jpeg(seed), ImageLimits(), embedder.input_size).image for seed in seeds]
    return to_pixels(images, embedder.preprocess)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    result: np.ndarray = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return result


@pytest.mark.parametrize("model", ["cs-tiny-vit", "ViT-B-32"])
def test_gpu_vectors_match_the_cpu_ones(tmp_path: Path, model: str) -> None:
    """Same seeded weights on both devices; batches that grow the pinned staging buffer, then one that reuses it."""
    gpu = embedder_on(tmp_path, "cuda", model=model)
    cpu = embedder_on(tmp_path, "cpu", model=model)
    assert gpu.info.runtime == "torch-cuda-fp16"
    assert gpu.info.fingerprint == cpu.info.fingerprint  # the same model: a catalog embedded on one serves the other
    for seeds in (range(1), range(1, 8), range(8, 72), range(72, 75)):
        pixels = photo_pixels(cpu, seeds)
        on_gpu, on_cpu = gpu.embed_batch(pixels), cpu.embed_batch(pixels)
        assert on_gpu.dtype == np.float32 and on_gpu.shape == on_cpu.shape
        assert cosines(on_gpu, on_cpu).min() > 0.995


def test_batch_limit_on_a_gpu_is_measured_up_to_256(tmp_path: Path) -> None:
    """On a GPU photos/s keep rising with the batch: the measured limit must be allowed past the CPU's 16."""
    gpu = embedder_on(tmp_path, "cuda")
    assert batch_ceiling(gpu) == GPU_BATCH_CEILING == 256
    rates = batch_rates(gpu, batch_ceiling(gpu))
    assert max(rates) == 256
    assert largest_fast_batch(rates) > 16, rates


def test_compiled_gpu_model_matches_eager(tmp_path: Path) -> None:
    eager = embedder_on(tmp_path, "cuda")
    compiled = embedder_on(tmp_path, "cuda", torch_compile=True)
    assert compiled.info.runtime == "torch-cuda-fp16-compiled"
    for seeds in (range(4), range(4, 13)):  # two batch sizes: compiled with dynamic shapes
        pixels = photo_pixels(eager, seeds)
        assert cosines(compiled.embed_batch(pixels), eager.embed_batch(pixels)).min() > 0.999


@pytest.fixture
def gpu_client(tmp_path: Path) -> Iterator[TestClient]:
    settings = tiny_settings(tmp_path / "data", device="cuda", runtime="torch")
    core = ServiceCore(settings, embedder_on(tmp_path, "cuda"))
    core.index_keeper.sync()
    try:
        with TestClient(create_app(settings, core=core)) as client:
            _, token = core.keys.create("admin", [], "tests")
            client.headers["Authorization"] = f"Bearer {token}"
            yield client
    finally:
        core.close()


def test_service_on_the_gpu_scans_over_http(gpu_client: TestClient) -> None:
    """The real app on a GPU core: references embedded on the device, scans batched onto it, answers as on CPU."""
    refs = [add_reference(gpu_client, imaging.jpeg(500 + i), product=f"p{i}") for i in range(6)]
    ready = gpu_client.get("/readyz").json()
    assert ready["model"]["runtime"] == "torch-cuda-fp16"
    for i, ref in enumerate(refs):
        result = scan(gpu_client, [imaging.jpeg(500 + i), imaging.jpeg(900 + i, size=(640, 480))], listing_id=f"L{i}")
        top = result["images"][0]["matches"][0]
        assert (top["image_id"], top["similarity"] > 0.99) == (ref["image_id"], True)
        assert len(result["images"]) == 2 and 0.0 <= result["risk"] <= 1.0
    bad = gpu_client.post("/v1/scan", files=[("images", ("a.jpg", b"not an image", "image/jpeg"))])
    assert bad.status_code == 400
    assert scan(gpu_client, [imaging.jpeg(500)])["images"][0]["matches"][0]["image_id"] == refs[0]["image_id"]
