"""The one image decoder: formats, limits, EXIF orientation, colour modes; and the core's content-type check."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from embeddings import ImageLimits, ImageRejected, decode_image
from service.core import ServiceCore
from service.scanning.photo_prep import PhotoInput
from tests import imaging
from tests.helpers import sha256

LIMITS = ImageLimits()


@pytest.mark.parametrize(
    ("data", "fmt", "media_type"),
    [
        (imaging.jpeg(1), "JPEG", "image/jpeg"),
        (imaging.png(1), "PNG", "image/png"),
        (imaging.webp(1), "WEBP", "image/webp"),
    ],
)
def test_supported_formats_decode_to_rgb(data: bytes, fmt: str, media_type: str) -> None:
    decoded = decode_image(data, LIMITS)
    assert decoded.format == fmt
    assert decoded.media_type == media_type
    assert decoded.image.mode == "RGB"
    assert (decoded.width, decoded.height) == decoded.image.size == (96, 96)
    assert decoded.sha256 == sha256(data)


def test_png_pixels_survive_decoding_exactly() -> None:
    original = imaging.noise_image(3, (40, 30))
    decoded = decode_image(imaging.encode(original, "PNG"), LIMITS)
    assert np.array_equal(np.asarray(decoded.image), np.asarray(original))


def test_jpeg_draft_decodes_smaller_but_reports_the_file_size() -> None:
    decoded = decode_image(imaging.jpeg(2, (640, 480)), LIMITS, draft_size=64)
    assert (decoded.width, decoded.height) == (640, 480)
    assert decoded.image.size[0] < 640 and min(decoded.image.size) >= 64


def test_scaled_jpeg_decode_uses_the_finest_dct_scale_that_covers_the_model_input() -> None:
    """640 px to at least 224: libjpeg-turbo's 3/8 (240 px), where Pillow's draft mode stops at 1/2 (320 px)."""
    photo_like = imaging.noise_image(3, (40, 40)).resize((640, 640), Image.Resampling.BICUBIC)  # smooth, not noise
    data = imaging.encode(photo_like, "JPEG", quality=95)
    decoded = decode_image(data, LIMITS, draft_size=224)
    assert decoded.image.size == (240, 240) and decoded.image.mode == "RGB"
    assert (decoded.width, decoded.height) == (640, 640)
    full = decode_image(data, LIMITS).image.resize((240, 240), Image.Resampling.BOX)
    difference = np.abs(np.asarray(decoded.image, dtype=np.int16) - np.asarray(full, dtype=np.int16))
    assert difference.mean() < 2  # the same picture, scaled in the DCT instead of in pixels


def test_small_jpeg_is_never_scaled_up() -> None:
    assert decode_image(imaging.jpeg(4, (96, 80)), LIMITS, draft_size=224).image.size == (96, 80)


@pytest.mark.parametrize("draft_size", [None, 32], ids=["full", "scaled"])
@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_rotation_is_applied(orientation: int, draft_size: int | None) -> None:
    """Stored 80x40 (red left, blue right) with Orientation 6 (or 8) is a 40x80 portrait image upright."""
    decoded = decode_image(imaging.exif_jpeg((80, 40), orientation), LIMITS, draft_size)
    width, height = decoded.image.size
    assert height == 2 * width and (width == 40 or draft_size)
    assert (decoded.width, decoded.height) == (40, 80)
    top = decoded.image.getpixel((width // 2, height // 16))
    bottom = decoded.image.getpixel((width // 2, height - height // 16))
    red, blue = (top, bottom) if orientation == 6 else (bottom, top)
    assert isinstance(red, tuple) and isinstance(blue, tuple)
    assert red[0] > 150 and red[2] < 100, red
    assert blue[2] > 150 and blue[0] < 100, blue


@pytest.mark.parametrize("draft_size", [None, 32], ids=["full", "scaled"])
def test_exif_mirror_keeps_size_and_flips(draft_size: int | None) -> None:
    decoded = decode_image(imaging.exif_jpeg((80, 40), 2), LIMITS, draft_size)  # 2 = mirrored horizontally
    assert (decoded.width, decoded.height) == (80, 40)
    width, height = decoded.image.size
    assert width == 2 * height
    left = decoded.image.getpixel((width // 16, height // 2))
    assert isinstance(left, tuple) and left[2] > 150  # blue is now on the left


def test_png_alpha_is_composited_on_white() -> None:
    image = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    image.paste((200, 0, 0, 255), (0, 0, 10, 20))
    decoded = decode_image(imaging.encode(image, "PNG"), LIMITS)
    assert decoded.image.mode == "RGB"
    assert decoded.image.getpixel((2, 2)) == (200, 0, 0)
    assert decoded.image.getpixel((15, 15)) == (255, 255, 255)


def test_palette_png_with_transparency() -> None:
    image = Image.new("P", (20, 20), 0)
    image.putpalette([0, 0, 0, 10, 120, 240] + [0] * (254 * 3))
    image.paste(1, (10, 0, 20, 20))
    data = imaging.encode(image, "PNG", transparency=0)
    assert Image.open(io.BytesIO(data)).mode == "P"
    decoded = decode_image(data, LIMITS)
    assert decoded.image.mode == "RGB"
    assert decoded.image.getpixel((2, 2)) == (255, 255, 255)  # transparent index -> white
    assert decoded.image.getpixel((15, 5)) == (10, 120, 240)


def test_palette_png_without_transparency() -> None:
    data = imaging.encode(imaging.noise_image(4, (24, 24)).convert("P"), "PNG")
    decoded = decode_image(data, LIMITS)
    assert decoded.image.mode == "RGB"
    assert len(set(decoded.image.getdata())) > 4


def test_sixteen_bit_png_is_scaled_not_clipped() -> None:
    values = np.array([[0, 16384, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)
    data = imaging.encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    decoded = decode_image(data, LIMITS)
    assert decoded.image.mode == "RGB"
    row = [decoded.image.getpixel((x, 0)) for x in range(4)]
    greys = [p[0] for p in row if isinstance(p, tuple)]
    assert greys[0] == 0 and greys[3] >= 254
    assert 60 <= greys[1] <= 66 and 125 <= greys[2] <= 130  # scaled by 1/257, not clipped at 255
    assert all(isinstance(p, tuple) and p[0] == p[1] == p[2] for p in row)


@pytest.mark.parametrize("draft_size", [None, 8], ids=["full", "scaled"])
def test_greyscale_jpeg_becomes_rgb(draft_size: int | None) -> None:
    decoded = decode_image(imaging.encode(Image.new("L", (16, 16), 90), "JPEG"), LIMITS, draft_size)
    assert decoded.image.mode == "RGB"
    assert decoded.image.getpixel((4, 4)) == (90, 90, 90)


@pytest.mark.parametrize("draft_size", [None, 16], ids=["full", "scaled"])
def test_cmyk_jpeg_decodes_to_rgb(draft_size: int | None) -> None:
    """libjpeg-turbo's scaled decode takes no CMYK: Pillow decodes it, at the size it can."""
    data = imaging.encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", quality=95)  # pure red ink
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    decoded = decode_image(data, LIMITS, draft_size)
    assert decoded.image.mode == "RGB"
    r, g, b = decoded.image.getpixel((8, 8))  # type: ignore[misc]
    assert r > 200 and g < 60 and b < 60


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (b"", 400, "empty"),
        (b"hello, this is plain text and not a picture\n" * 3, 400, "not a decodable image"),
        (imaging.truncated_jpeg(), 400, "corrupt or truncated"),
        (imaging.gif(), 415, "GIF"),
        (imaging.bmp(), 415, "BMP"),
        (imaging.png_claiming_size(8000, 8000), 413, "pixels"),  # 64M > the 40M default, refused before decoding
        (imaging.png_claiming_size(100_000, 100_000), 413, "too many pixels"),  # Pillow's own bomb guard
    ],
    ids=["empty", "text", "truncated-jpeg", "gif", "bmp", "over-pixel-limit", "decompression-bomb"],
)
@pytest.mark.parametrize("draft_size", [None, 64], ids=["full", "scaled"])
def test_bad_input_is_rejected_with_its_status(data: bytes, status: int, words: str, draft_size: int | None) -> None:
    with pytest.raises(ImageRejected) as caught:
        decode_image(data, LIMITS, draft_size)
    assert caught.value.status == status
    assert words in str(caught.value)


def test_byte_and_pixel_limits() -> None:
    data = imaging.png(5, (64, 64))
    with pytest.raises(ImageRejected) as too_big:
        decode_image(data, ImageLimits(max_bytes=len(data) - 1))
    assert too_big.value.status == 413 and "bytes" in str(too_big.value)
    assert decode_image(data, ImageLimits(max_bytes=len(data))).width == 64

    solid = imaging.solid_png((3000, 3000))
    assert len(solid) < 50_000  # tiny in bytes, 9M pixels
    with pytest.raises(ImageRejected) as too_many:
        decode_image(solid, ImageLimits(max_pixels=3000 * 3000 - 1))
    assert too_many.value.status == 413 and "pixels" in str(too_many.value)


# --- the core's declared-type check ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "content_type", "ok"),
    [
        (imaging.jpeg(), "image/jpeg", True),
        (imaging.jpeg(), "image/jpg", True),
        (imaging.jpeg(), "application/octet-stream", True),
        (imaging.jpeg(), None, True),
        (imaging.png(), "image/png; charset=binary", True),
        (imaging.webp(), "IMAGE/WEBP", True),
        (imaging.png(), "image/jpeg", False),
        (imaging.jpeg(), "image/webp", False),
        (imaging.jpeg(), "text/plain", False),
        (imaging.gif(), "image/gif", False),
    ],
)
def test_declared_content_type_must_match_the_bytes(core: ServiceCore, data: bytes, content_type: str | None, ok: bool) -> None:
    photo = PhotoInput(data, "x", content_type)
    if ok:
        assert core.writer.decode(photo).image.mode == "RGB"
    else:
        with pytest.raises(ImageRejected) as caught:
            core.writer.decode(photo)
        assert caught.value.status == 415
