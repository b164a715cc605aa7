"""The offline default model on real sneaker photos, and the model-loading errors users will meet."""

from __future__ import annotations

import io
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from embeddings import ImageEmbedder, ImageLimits, ModelLoadError, ModelSpec, decode_image, load_embedder
from embeddings.embedder import model_fingerprint
from embeddings.loading import load_visual, save_checkpoint
from embeddings.preprocess import resize_and_crop, to_model_input, to_pixels
from embeddings.pretrained import PACKAGED_WEIGHTS
from service.catalog.writer import ImportRow
from service.config import Settings
from service.core import ServiceCore
from service.scanning.photo_prep import PhotoInput
from tests import imaging
from tests.helpers import pick_sneakers


def jpeg_of(image: Image.Image) -> bytes:
    return imaging.encode(image, "JPEG", quality=90)


def centre_crop(image: Image.Image, keep: float) -> Image.Image:
    width, height = image.size
    dx, dy = round(width * (1 - keep) / 2), round(height * (1 - keep) / 2)
    return image.crop((dx, dy, width - dx, height - dy))


def test_default_model_is_the_packaged_efficientnet(real_embedder: ImageEmbedder) -> None:
    info = real_embedder.info
    assert (info.architecture, info.weights, info.dim, info.random_weights) == (
        "efficientnet-lite0",
        "efficientnet-lite0/imagenet",
        1280,
        False,
    )
    assert real_embedder.default_match_threshold == PACKAGED_WEIGHTS[("efficientnet-lite0", "imagenet")].match_threshold
    vectors = real_embedder.embed_images([imaging.noise_image(1), imaging.noise_image(2)])
    assert vectors.shape == (2, 1280) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_crops_and_mirrors_find_their_original(
    real_embedder: ImageEmbedder,
    tmp_path: Path,
    sneakers_dir: Path,
    sneaker_rows: list[dict[str, str]],
) -> None:
    rows = pick_sneakers(sneaker_rows, 20)
    core = ServiceCore(Settings(data_dir=tmp_path / "data"), real_embedder)
    core.index_keeper.sync()
    try:
        originals = [(sneakers_dir / row["path"]).read_bytes() for row in rows]
        summary = core.writer.import_rows(
            [
                ImportRow(row["path"], PhotoInput(data, Path(row["path"]).name), row["brand"], row["product"], row["label"], None)
                for row, data in zip(rows, originals, strict=True)
            ]
        )
        assert (summary.added, summary.errors) == (20, [])
        by_sha = {ref.sha256: ref.image_id for ref in core.catalog.all_images()}
        misses = []
        for row, data in zip(rows, originals, strict=True):
            expected = by_sha[decode_image(data, ImageLimits()).sha256]
            image = Image.open(io.BytesIO(data)).convert("RGB")
            queries = [data, jpeg_of(centre_crop(image, 0.8)), jpeg_of(ImageOps.mirror(image))]
            result = core.pipeline.scan([PhotoInput(q) for q in queries], record=False).model_dump()
            assert not any(reason["code"] == "random_model_weights" for reason in result["reasons"])
            same, crop, mirror = (photo["matches"][0] for photo in result["images"])
            assert same["image_id"] == expected and same["similarity"] > 0.99
            for kind, top in (("crop", crop), ("mirror", mirror)):
                if top["image_id"] != expected:
                    misses.append(f"{kind} of {row['path']} matched {top['image_id']} ({top['similarity']:.3f})")
        assert misses == []
    finally:
        core.close()


def test_missing_open_clip_weights_say_how_to_provide_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Offline, so the hub is not even tried (huggingface_hub reads the variable at import; set both).
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cache = tmp_path / "empty-cache"
    cache.mkdir()
    spec = ModelSpec(name="ViT-B-32", pretrained="laion2b_s34b_b79k", cache_dir=cache)
    with pytest.raises(ModelLoadError) as caught:
        load_visual(spec)
    message = str(caught.value)
    assert "laion2b_s34b_b79k" in message
    assert "COUNTERFEIT_SCAN_CHECKPOINT" in message and "COUNTERFEIT_SCAN_MODEL_CACHE_DIR" in message


def test_random_weights_must_be_asked_for() -> None:
    with pytest.raises(ModelLoadError, match="no weights configured for 'cs-tiny-vit'"):
        load_visual(ModelSpec(name="cs-tiny-vit", pretrained=None))
    with pytest.raises(ModelLoadError, match="unknown model architecture 'no-such-net'"):
        load_visual(ModelSpec(name="no-such-net", pretrained=None, allow_random_weights=True))


def test_missing_or_unreadable_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist") as missing:
        load_visual(ModelSpec(checkpoint=tmp_path / "nope.pt"))
    assert "COUNTERFEIT_SCAN_CHECKPOINT" in str(missing.value)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ModelLoadError, match="not a readable torch file"):
        load_visual(ModelSpec(checkpoint=garbage))


def test_checkpoint_round_trip_keeps_the_fingerprint(
    real_embedder: ImageEmbedder, model_export_dir: Path, tmp_path: Path
) -> None:
    spec = Settings().model_spec()
    loaded = load_visual(spec)
    path = tmp_path / "ckpt" / "model.pt"
    save_checkpoint(path, spec.name, loaded, {"note": "test"})
    assert path.is_file() and not path.with_suffix(".pt.tmp").exists()

    again = load_visual(ModelSpec(name=spec.name, pretrained=None, checkpoint=path))
    assert again.weights == "checkpoint:model.pt"
    assert again.random_weights is False
    assert again.preprocess == loaded.preprocess
    assert again.match_threshold == loaded.match_threshold
    assert model_fingerprint(spec.name, again.visual, again.preprocess) == real_embedder.info.fingerprint

    from_checkpoint = load_embedder(ModelSpec(name=spec.name, pretrained=None, checkpoint=path), model_export_dir)
    assert from_checkpoint.info.fingerprint == real_embedder.info.fingerprint
    images = [imaging.noise_image(5, (120, 90))]
    assert np.allclose(from_checkpoint.embed_images(images), real_embedder.embed_images(images), atol=1e-5)


def test_tiny_checkpoint_carries_its_architecture(tmp_path: Path, tiny_embedder: ImageEmbedder) -> None:
    tiny = ModelSpec(name="cs-tiny-vit", pretrained=None, allow_random_weights=True)
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, "cs-tiny-vit", load_visual(tiny), {})
    # a checkpoint names its own architecture; the random-weights flag is not needed to load it
    again = load_visual(ModelSpec(name="cs-tiny-vit", pretrained=None, checkpoint=path))
    assert model_fingerprint("cs-tiny-vit", again.visual, again.preprocess) == tiny_embedder.info.fingerprint


def test_torch_and_onnx_runtimes_agree(real_embedder: ImageEmbedder, model_export_dir: Path) -> None:
    torch_embedder = load_embedder(ModelSpec(runtime="torch", device="cpu"), model_export_dir)
    assert real_embedder.info.runtime == "onnxruntime-cpu" and torch_embedder.info.runtime == "torch-cpu"
    assert torch_embedder.info.fingerprint == real_embedder.info.fingerprint
    images = [imaging.noise_image(seed, (100, 80)) for seed in range(3)]
    assert np.allclose(torch_embedder.embed_images(images), real_embedder.embed_images(images), atol=1e-4)


def test_the_model_normalises_uint8_pixels_as_training_does(real_embedder: ImageEmbedder) -> None:
    # serving hands the runtime cropped uint8 pixels and the graph normalises them; training normalises in numpy
    images = [imaging.noise_image(seed, (130, 90)) for seed in range(3)]
    spec = real_embedder.preprocess
    pixels = to_pixels(images, spec)
    assert pixels.dtype == np.uint8 and pixels.shape == (3, spec.size, spec.size, 3)
    visual = load_visual(ModelSpec()).visual.eval()
    with torch.inference_mode():
        expected = visual(torch.from_numpy(to_model_input(images, spec))).numpy()
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.allclose(real_embedder.embed_batch(pixels), expected, atol=1e-4)


def test_embed_batch_refuses_float_or_wrongly_sized_input(real_embedder: ImageEmbedder) -> None:
    size = real_embedder.input_size
    with pytest.raises(ValueError, match="uint8 pixels"):
        real_embedder.embed_batch(np.zeros((1, 3, size, size), dtype=np.float32))
    with pytest.raises(ValueError, match="uint8 pixels"):
        real_embedder.embed_batch(np.zeros((1, size + 1, size + 1, 3), dtype=np.uint8))
    assert real_embedder.embed_batch(np.zeros((0, size, size, 3), dtype=np.uint8)).shape == (0, real_embedder.info.dim)


def test_centre_square_is_resized_in_one_pass() -> None:
    # a wide photo: the centre square is what the model sees, whatever lies left and right of it
    image = Image.new("RGB", (300, 100), (255, 0, 0))
    image.paste((0, 255, 0), (100, 0, 200, 100))
    out = resize_and_crop(image, 50)
    assert out.shape == (50, 50, 3) and out.dtype == np.uint8
    assert out[5:45, 5:45].tolist() == np.full((40, 40, 3), (0, 255, 0), dtype=np.uint8).tolist()
