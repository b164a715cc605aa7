"""The service under test as the benchmarks run it: the real CLI in a subprocess, `serve` on a free loopback port.

Shared by `serve.py`, `load.py` and `scan_batch.py`, which measure the product as a user runs it, not its functions
in-process. Light on imports (no model, no torch), so a load generator that uses it stays cheap.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "from cli.main import main; main()"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli_json(args: Sequence[str], env: dict[str, str]) -> dict[str, Any]:
    """`counterfeit-scan ARGS`'s JSON answer; exits with its output when it fails."""
    done = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, check=False, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"counterfeit-scan {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-4000:]}")
    out: dict[str, Any] = json.loads(done.stdout)
    return out


def wait_ready(
    process: subprocess.Popen[bytes], url: str, exit_detail: Callable[[], str], timeout: float = 300, poll_s: float = 0.25
) -> dict[str, Any]:
    """The service's /readyz answer once it is ready; exits with `exit_detail()` (its log) if the process ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the service exited with {process.returncode}:\n{exit_detail()}")
        try:
            response = httpx.get(f"{url}/readyz", timeout=2)
            if response.status_code == 200:
                ready: dict[str, Any] = response.json()
                return ready
        except httpx.HTTPError:
            pass
        time.sleep(poll_s)
    raise SystemExit(f"the service did not become ready in {timeout} s:\n{exit_detail()}")
