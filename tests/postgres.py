"""A real PostgreSQL server for the tests, started once per session on loopback, one fresh database per test.

Which server: `COUNTERFEIT_SCAN_TEST_POSTGRES_URL` (an admin URL of a running server, e.g. in a CI service container);
else the local PostgreSQL binaries (`pg_config --bindir`, Debian's `/usr/lib/postgresql/<version>/bin`, or PATH) start
a throw-away cluster in a temp dir (as the `postgres` user when the tests run as root: initdb refuses root). Without
either, PostgreSQL tests skip with the reason, unless `COUNTERFEIT_SCAN_TEST_REQUIRE_POSTGRES=1` (`.ci/run` sets it),
which makes them fail instead: CI must not pass by skipping the backend it exists to test.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

# Read at import: the suite's autouse fixture clears COUNTERFEIT_SCAN_* variables around every test.
ADMIN_URL = os.environ.get("COUNTERFEIT_SCAN_TEST_POSTGRES_URL", "")
REQUIRED = os.environ.get("COUNTERFEIT_SCAN_TEST_REQUIRE_POSTGRES", "") not in ("", "0")
SERVER_USER = "postgres"  # who owns a cluster started as root
INITDB_OPTIONS = ["-E", "UTF8", "--locale=C", "--no-sync"]  # UTF-8 whatever the machine's locale


@dataclass
class PostgresServer:
    admin_url: URL
    _names = itertools.count(1)

    def create_database(self) -> str:
        """A new empty database; its SQLAlchemy URL (psycopg 3)."""
        name = f"cs_test_{os.getpid()}_{next(self._names)}"
        self._admin(f'CREATE DATABASE "{name}"')
        return self.admin_url.set(database=name).render_as_string(hide_password=False)

    def drop_database(self, url: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')

    def _admin(self, statement: str) -> None:
        engine = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                connection.execute(text(statement))
        finally:
            engine.dispose()


def find_bindir() -> Path | None:
    """Where initdb and pg_ctl are, or None."""
    candidates: list[str] = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
        candidates.append(out)
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(initdb).parent))
    for folder in candidates:
        if folder and (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    runuser = shutil.which("runuser")
    return (
        [runuser, "-u", SERVER_USER, "--", *command] if runuser else ["su", SERVER_USER, "-s", "/bin/sh", "-c", " ".join(command)]
    )


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    if ADMIN_URL:
        yield PostgresServer(make_url(ADMIN_URL).set(drivername="postgresql+psycopg"))
        return
    bindir = find_bindir()
    if bindir is None:
        message = "PostgreSQL is not installed (no initdb/pg_ctl found; Debian: apt-get install postgresql)"
        if REQUIRED:
            pytest.fail(message + " and COUNTERFEIT_SCAN_TEST_REQUIRE_POSTGRES is set")
        pytest.skip(message)
    root = Path(tempfile.mkdtemp(prefix="cs-postgres-"))
    data, sockets, port = root / "data", root / "sockets", _free_port()
    sockets.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, SERVER_USER)
        shutil.chown(sockets, SERVER_USER)
    log = root / "server.log"
    try:
        subprocess.run(
            _as_server_user([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", *INITDB_OPTIONS]),
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        durability = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"  # a throw-away cluster
        options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c max_connections=200 {durability}"
        subprocess.run(
            _as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start"]),
            check=True, capture_output=True, timeout=90,
        )  # fmt: skip
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        logged = log.read_text(errors="replace")[-2000:] if log.is_file() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL from {bindir}: {exc}\n{detail.decode(errors='replace')}\n{logged}")
    try:
        yield PostgresServer(
            URL.create("postgresql+psycopg", username="postgres", host="127.0.0.1", port=port, database="postgres")
        )
    finally:
        subprocess.run(
            _as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
            capture_output=True, check=False, timeout=60,
        )  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped after the test."""
    url = postgres_server.create_database()
    try:
        yield url
    finally:
        postgres_server.drop_database(url)
