"""A lean HTTP/1.1 load generator for POST /v1/scan: request bodies built once, closed-loop and open-loop runs.

The client shares the machine's cores with the service under test, so it spends as little CPU per request as it
can: each multipart body and its request bytes are prepared before the run, and an answer is read by its status line
and Content-Length alone (see `Connection`). Used by `serve.py`.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Body:
    content: bytes
    content_type: str
    photos: int


def multipart(photos: Sequence[bytes], listing_id: str) -> Body:
    """A POST /v1/scan body built once, so the client spends little CPU per request."""
    boundary = "csbench" + secrets.token_hex(8)
    chunks = []
    for i, data in enumerate(photos):
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="p{i}.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n".encode()
        )
        chunks.append(data + b"\r\n")
    chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="listing_id"\r\n\r\n{listing_id}\r\n'.encode())
    chunks.append(f"--{boundary}--\r\n".encode())
    return Body(b"".join(chunks), f"multipart/form-data; boundary={boundary}", len(photos))


def bodies_for(paths: Sequence[Path], per_request: int) -> list[Body]:
    datas = [p.read_bytes() for p in paths]
    count = max(1, len(datas) // per_request)
    return [multipart(datas[i * per_request : (i + 1) * per_request], f"bench-{i}") for i in range(count)]


@dataclass
class LevelResult:
    name: str
    requests: int
    photos: int
    seconds: float
    latencies: list[float]
    statuses: Counter[int] = field(default_factory=Counter)
    batch_mean: float = float("nan")
    server_cpu_ms_per_photo: float = float("nan")
    client_cpu_ms_per_photo: float = float("nan")
    peak_rss_mb: float = float("nan")
    full_gcs: int = 0
    cpu_by_thread: dict[str, float] = field(default_factory=dict)  # ms per photo
    model_wall_ms: float = float("nan")  # the model's wall time per photo per worker (the service's histogram)

    @property
    def throughput(self) -> float:
        return self.photos / self.seconds


class Connection:
    """A keep-alive HTTP/1.1 connection that sends prepared request bytes and reads the answer with little CPU.

    httpx spent about 4 ms of CPU per request here, on the same two cores as the service under test: the load
    generator's own cost came out of the served throughput. This sends bytes built once per body and parses only
    the status line and Content-Length (uvicorn answers JSON with a Content-Length, never chunked).
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        connection = cls(host, port)
        await connection.connect()
        return connection

    async def connect(self) -> None:
        self.close()
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)

    async def request(self, data: bytes) -> tuple[int, bytes]:
        """Send `data` and read the answer; once more on a fresh connection when the server had closed this one
        (uvicorn drops keep-alive connections idle for 5 s, as an open-loop pool leaves some)."""
        try:
            return await self._exchange(data)
        except (asyncio.IncompleteReadError, ConnectionError):
            await self.connect()
            return await self._exchange(data)

    async def _exchange(self, data: bytes) -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        self.writer.write(data)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def request_bytes(host: str, port: int, body: Body, headers: dict[str, str]) -> bytes:
    lines = ["POST /v1/scan HTTP/1.1", f"Host: {host}:{port}", f"Content-Type: {body.content_type}"]
    lines += [f"Content-Length: {len(body.content)}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body.content


async def _post(connection: Connection, request: bytes, photos: int, result: LevelResult) -> None:
    started = time.perf_counter()
    status, answer = await connection.request(request)
    elapsed = time.perf_counter() - started
    result.statuses[status] += 1
    if status == 200:
        result.latencies.append(elapsed)
        result.photos += photos
    elif status != 429:
        raise SystemExit(f"scan failed with {status}: {answer[:500].decode(errors='replace')}")


async def closed_loop(url: str, bodies: Sequence[Body], headers: dict[str, str], concurrency: int, requests: int) -> LevelResult:
    """`concurrency` clients, each sending its next request when the last one is answered."""
    result = LevelResult(f"c={concurrency}", requests, 0, 0.0, [])
    host, port, prepared = _prepared(url, bodies, headers)
    order = iter(range(requests))
    connections = [await Connection.open(host, port) for _ in range(concurrency)]
    for i, connection in enumerate(connections):  # warm each connection once
        await connection.request(prepared[i % len(prepared)][0])

    async def worker(connection: Connection) -> None:
        for i in order:
            request, photos = prepared[i % len(prepared)]
            await _post(connection, request, photos, result)

    started = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in connections))
    result.seconds = time.perf_counter() - started
    for connection in connections:
        connection.close()
    return result


async def open_loop(
    url: str, bodies: Sequence[Body], headers: dict[str, str], rate: float, requests: int, seed: int = 0
) -> LevelResult:
    """Poisson arrivals at `rate` requests/s, whatever the answers: latency under a realistic, bursty load."""
    result = LevelResult(f"open loop {rate:.0f} req/s", requests, 0, 0.0, [])
    host, port, prepared = _prepared(url, bodies, headers)
    rng = random.Random(seed)
    arrivals = np.cumsum([rng.expovariate(rate) for _ in range(requests)])
    idle: list[Connection] = [await Connection.open(host, port) for _ in range(8)]

    async def send(request: bytes, photos: int) -> None:
        connection = idle.pop() if idle else await Connection.open(host, port)
        await _post(connection, request, photos, result)
        idle.append(connection)

    tasks = []
    started = time.perf_counter()
    for i, at in enumerate(arrivals):
        delay = started + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(*prepared[i % len(prepared)])))
    await asyncio.gather(*tasks)
    result.seconds = time.perf_counter() - started
    for connection in idle:
        connection.close()
    return result


def _prepared(url: str, bodies: Sequence[Body], headers: dict[str, str]) -> tuple[str, int, list[tuple[bytes, int]]]:
    """The service's host and port, and each body as the request bytes to send with its photo count."""
    host, _, port_text = url.removeprefix("http://").partition(":")
    port = int(port_text)
    return host, port, [(request_bytes(host, port, body, headers), body.photos) for body in bodies]
