"""`counterfeit-scan serve` and the other console commands in child processes, as an operator runs them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import TINY_MODEL_FLAGS

SCRIPT = Path(sys.executable).parent / "counterfeit-scan"
START_TIMEOUT_S = 120.0


def needs_console_script() -> None:
    if not SCRIPT.is_file():
        pytest.skip(f"console script not installed at {SCRIPT}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def child_env(**settings: str) -> dict[str, str]:
    """The environment for a child process: none of the developer's COUNTERFEIT_SCAN_*, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COUNTERFEIT_SCAN_")}
    env.update({f"COUNTERFEIT_SCAN_{k.upper()}": v for k, v in settings.items()})
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Server:
    """`counterfeit-scan serve` in a child process on a free port; killed with SIGKILL, like a crash."""

    def __init__(self, data_dir: Path, log_path: Path, *flags: str, **settings: str) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.flags = flags
        self.settings = {"index_save_interval_s": "0.05", "threads": "1", "decode_workers": "1", **settings}
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        command = [str(SCRIPT), "serve", "--data-dir", str(self.data_dir), "--port", str(port), *TINY_MODEL_FLAGS, *self.flags]
        with open(self.log_path, "ab") as log:
            env = child_env(**self.settings)
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert self.proc.poll() is None, f"server exited with {self.proc.returncode}:\n{self.log_tail()}"
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"server not ready after {START_TIMEOUT_S} s:\n{self.log_tail()}"
            time.sleep(0.1)

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.is_file() else ""


def post_reference(client: httpx.Client, data: bytes, brand: str = "Acme", product: str = "p") -> str:
    """Add an authentic reference photo through the HTTP API of a served process; its image_id."""
    added = client.post(
        "/v1/catalog/images",
        files={"file": ("ref.jpg", data, "image/jpeg")},
        data={"brand": brand, "product": product, "label": "authentic"},
    )
    assert added.status_code == 201, added.text
    image_id: str = added.json()["image_id"]
    return image_id
