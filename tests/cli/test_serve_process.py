"""`counterfeit-scan serve` as an operator starts it: uvicorn's HTTP parser and event loop are the ones asked for."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from tests import imaging
from tests.helpers import admin_token, tiny_settings
from tests.served import Server, needs_console_script, post_reference

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the loaded libraries from /proc")


@pytest.mark.parametrize(
    ("parser", "loop", "c_extensions"), [("auto", "auto", True), ("h11", "asyncio", False)], ids=["default", "pure-python"]
)
def test_serve_scans_on_the_http_parser_and_event_loop_asked_for(
    data_dir: Path, tmp_path: Path, parser: str, loop: str, c_extensions: bool
) -> None:
    needs_console_script()
    token = admin_token(tiny_settings(data_dir))
    server = Server(data_dir, tmp_path / "serve.log", "--http-parser", parser, "--event-loop", loop)
    try:
        server.start()
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
            image_id = post_reference(client, imaging.jpeg(3))
            scanned = client.post("/v1/scan", files=[("images", ("a.jpg", imaging.jpeg(3), "image/jpeg"))])
            assert scanned.status_code == 200, scanned.text
            assert scanned.json()["images"][0]["matches"][0]["image_id"] == image_id
            bad = client.post("/v1/scan", files=[("images", ("a.jpg", b"not an image", "image/jpeg"))])
            assert bad.status_code == 400
        assert server.proc is not None
        libraries = Path(f"/proc/{server.proc.pid}/maps").read_text()
    finally:
        server.stop()
    assert ("/httptools/" in libraries) is c_extensions
    assert ("/uvloop/" in libraries) is c_extensions
