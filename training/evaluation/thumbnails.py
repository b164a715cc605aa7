"""Small JPEG thumbnails as data URIs, so the HTML report is one self-contained file."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Final

from PIL import Image, ImageOps

THUMBNAIL_PX: Final = 160
_QUALITY: Final = 80


def thumbnail_data_uri(data: bytes, size: int = THUMBNAIL_PX) -> str | None:
    """A `data:image/jpeg;base64,...` thumbnail at most `size` px on a side; None when the bytes are not an image."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            # Let the JPEG decoder downscale while decoding: far cheaper than decoding a 12 MP photo in full.
            image.draft("RGB", (size * 2, size * 2))
            picture = ImageOps.exif_transpose(image)
            picture.thumbnail((size, size))
            flat = _on_white(picture)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    buffer = io.BytesIO()
    flat.save(buffer, format="JPEG", quality=_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def file_thumbnail_data_uri(path: str | Path, size: int = THUMBNAIL_PX) -> str | None:
    """The thumbnail of an image file; None when it is missing or unreadable."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    return thumbnail_data_uri(data, size)


def png_data_uri(path: Path) -> str:
    """A PNG file as a data URI, unchanged."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _on_white(image: Image.Image) -> Image.Image:
    # JPEG has no alpha: flatten transparent pixels onto white rather than the black a bare convert would give.
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
