"""Hostile input the first layers must stop: streamed oversized bodies, animated images, orphaned files after crashes."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from embeddings import ImageLimits, ImageRejected, decode_image
from service.catalog.orphan_blobs import collect_orphan_blobs
from service.config import Settings
from service.core import ServiceCore
from service.scanning.photo_prep import PhotoInput
from tests import imaging
from tests.helpers import stored_state, tiny_settings


def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (64, 64), color) for color in ("red", "blue", "green")]
    out = io.BytesIO()
    frames[0].save(out, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_animated_images_are_refused(fmt: str) -> None:
    with pytest.raises(ImageRejected) as info:
        decode_image(animated(fmt), ImageLimits())
    assert info.value.status == 415 and "still photo" in str(info.value)


def test_still_multiframe_free_formats_still_decode() -> None:
    assert decode_image(imaging.png(3), ImageLimits()).image.mode == "RGB"


@pytest.fixture
def small_body_client(make_client: object, data_dir: Path) -> TestClient:
    settings = tiny_settings(data_dir, max_request_bytes=64 * 1024)
    return make_client(settings)  # type: ignore[operator, no-any-return]


def test_declared_oversized_body_is_refused_unread(small_body_client: TestClient, data_dir: Path) -> None:
    before = stored_state(small_body_client, data_dir)
    big = imaging.jpeg(1, size=(800, 800), quality=100)
    assert len(big) > 64 * 1024
    response = small_body_client.post("/v1/scan", files=[("images", ("a.jpg", big, "image/jpeg"))])
    assert response.status_code == 413 and "larger than 65536 bytes" in response.json()["detail"]
    upload = small_body_client.post("/v1/catalog/images", files={"file": ("a.jpg", big, "image/jpeg")},
                                    data={"brand": "Acme", "product": "runner", "label": "authentic"})  # fmt: skip
    assert upload.status_code == 413
    assert stored_state(small_body_client, data_dir) == before
    assert small_body_client.post("/v1/scan", files=[("images", ("a.jpg", imaging.jpeg(1), "image/jpeg"))]).status_code == 200


def test_streamed_oversized_body_is_cut_off(small_body_client: TestClient, data_dir: Path) -> None:
    before = stored_state(small_body_client, data_dir)
    payload = imaging.jpeg(2, size=(900, 900), quality=100)
    body = (
        b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        + payload
        + b'\r\n--xyz\r\nContent-Disposition: form-data; name="brand"\r\n\r\nAcme\r\n--xyz--\r\n'
    )

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold while streaming
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096]

    response = small_body_client.post(
        "/v1/catalog/images", content=chunks(), headers={"content-type": "multipart/form-data; boundary=xyz"}
    )
    assert response.status_code == 413
    assert stored_state(small_body_client, data_dir) == before


def test_orphaned_blobs_and_temp_files_are_collected(core: ServiceCore, settings: Settings) -> None:
    kept = core.writer.add_reference(PhotoInput(imaging.jpeg(1)), "Acme", "runner", "authentic").ref
    orphan = core.blobs.put("ab" * 32, b"written, then the process died before the row was committed")
    temp = orphan.with_name("cd" * 32 + ".123.456.tmp")
    temp.write_bytes(b"half a file")
    fresh = core.blobs.put("ef" * 32, b"a write in flight in another process")
    old = time.time() - 7200
    for path in (orphan, temp):
        os.utime(path, (old, old))
    assert collect_orphan_blobs(core.catalog, core.blobs, core.write_lock, min_age_s=3600) == 2
    assert not orphan.exists() and not temp.exists()
    assert fresh.exists()  # too young to judge
    assert core.blobs.path(kept.sha256).exists()


@pytest.mark.parametrize("cut", [30, 100, 400])
def test_truncated_webp_is_a_400_not_a_crash(cut: int) -> None:
    noisy = Image.effect_noise((300, 300), 50).convert("RGB")
    out = io.BytesIO()
    noisy.save(out, "WEBP")
    with pytest.raises(ImageRejected) as info:
        decode_image(out.getvalue()[:cut], ImageLimits())
    assert info.value.status == 400
