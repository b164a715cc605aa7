"""Per-key rate limits: a token bucket per API key, rate and burst by role; over it: 429 with Retry-After."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.access.rate_limit import RateLimit, RateLimiter, retry_after_header, role_limits
from service.config import Settings
from service.core import ServiceCore
from tests.helpers import tiny_settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- the buckets --------------------------------------------------------------------------------------------------
def test_a_bucket_allows_its_burst_then_one_request_per_refill() -> None:
    clock = Clock()
    limiter = RateLimiter({"scanner": RateLimit(per_second=2.0, burst=3)}, clock)
    assert [limiter.acquire("k1", "scanner") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("k1", "scanner") == pytest.approx(0.5)  # one token comes back every 0.5 s
    clock.now += 0.25
    assert limiter.acquire("k1", "scanner") == pytest.approx(0.25)
    clock.now += 0.25
    assert limiter.acquire("k1", "scanner") == 0.0
    assert limiter.acquire("k1", "scanner") > 0
    clock.now += 100  # idle for long: back to a full burst, no more
    assert [limiter.acquire("k1", "scanner") for _ in range(4)][-2:] == [0.0, pytest.approx(0.5)]


def test_keys_have_separate_buckets_and_roles_their_own_limits() -> None:
    clock = Clock()
    limiter = RateLimiter({"scanner": RateLimit(1.0, 1), "brand": RateLimit(1.0, 5), "admin": RateLimit(0.0, 0)}, clock)
    assert limiter.acquire("a", "scanner") == 0.0
    assert limiter.acquire("a", "scanner") > 0
    assert limiter.acquire("b", "scanner") == 0.0  # another scanner key is not held back by the first
    assert [limiter.acquire("c", "brand") for _ in range(5)] == [0.0] * 5
    assert all(limiter.acquire("root", "admin") == 0.0 for _ in range(1000))  # 0: unlimited


def test_burst_zero_means_a_seconds_worth() -> None:
    assert RateLimit(2.5, 0).capacity == 3.0
    assert RateLimit(0.2, 0).capacity == 1.0
    assert RateLimit(2.5, 7).capacity == 7.0


def test_retry_after_is_whole_seconds_rounded_up() -> None:
    assert [retry_after_header(w) for w in (0.01, 1.0, 1.2, 9.99)] == ["1", "1", "2", "10"]


def test_idle_buckets_are_forgotten_when_there_are_many() -> None:
    clock = Clock()
    limiter = RateLimiter({"scanner": RateLimit(1.0, 1)}, clock)
    limiter.MAX_IDLE_BUCKETS = 3
    for key in ("a", "b", "c"):
        limiter.acquire(key, "scanner")
    clock.now += 5  # all three refilled
    limiter.acquire("d", "scanner")
    assert set(limiter._buckets) == {"d"}
    assert limiter.acquire("d", "scanner") > 0  # the live one keeps its state


def test_settings_give_each_role_its_limits(data_dir: Path) -> None:
    settings = tiny_settings(data_dir, rate_limit_scanner_per_s=7, rate_limit_brand_burst=9, rate_limit_admin_per_s=0)
    limits = role_limits(settings)
    assert limits["scanner"].per_second == 7 and limits["brand"].burst == 9 and limits["admin"].unlimited


# --- over HTTP ----------------------------------------------------------------------------------------------------
@pytest.fixture
def limited(make_client: Callable[..., TestClient], data_dir: Path) -> TestClient:
    settings: Settings = tiny_settings(
        data_dir, rate_limit_scanner_per_s=0.5, rate_limit_scanner_burst=3, rate_limit_brand_per_s=0.5, rate_limit_brand_burst=3
    )
    return make_client(settings)  # its own key is an admin key: unlimited by default


def key(engine_client: TestClient, role: str, brands: tuple[str, ...] = ()) -> dict[str, str]:
    core: ServiceCore = engine_client.app.state.runtime.core  # type: ignore[attr-defined]
    return {"Authorization": f"Bearer {core.keys.create(role, list(brands), role)[1]}"}


def test_a_key_over_its_limit_gets_429_with_retry_after_then_recovers(limited: TestClient) -> None:
    scanner = key(limited, "scanner")
    for _ in range(3):  # the burst: the route's own answer (no such scan)
        assert limited.get("/v1/scans/scan_x", headers=scanner).status_code == 404
    refused = limited.get("/v1/scans/scan_x", headers=scanner)
    assert refused.status_code == 429, refused.text
    assert refused.headers["retry-after"] in ("1", "2")  # 0.5 tokens a second: the next one in (almost) 2 s
    assert "rate limit" in refused.json()["detail"] and "scanner" in refused.json()["detail"]
    time.sleep(int(refused.headers["retry-after"]))
    assert limited.get("/v1/scans/scan_x", headers=scanner).status_code == 404
    assert limited.get("/v1/scans/scan_x", headers=scanner).status_code == 429
    metrics = limited.get("/metrics").text
    assert 'counterfeit_scan_rate_limited_total{role="scanner"} 2.0' in metrics
    assert 'counterfeit_scan_rejected_total{status="429"} 2.0' in metrics


def test_one_keys_burst_does_not_limit_another(limited: TestClient) -> None:
    runaway, other, brand = key(limited, "scanner"), key(limited, "scanner"), key(limited, "brand", ("Acme",))
    while limited.get("/v1/scans/scan_x", headers=runaway).status_code != 429:
        pass
    assert limited.get("/v1/scans/scan_x", headers=other).status_code == 404
    assert limited.get("/v1/catalog/brands", headers=brand).status_code == 200
    assert all(limited.get("/v1/catalog/brands").status_code == 200 for _ in range(20))  # admin: unlimited by default


def test_a_throttled_request_is_refused_before_its_body_is_read(limited: TestClient) -> None:
    scanner = key(limited, "scanner")
    while limited.get("/v1/scans/scan_x", headers=scanner).status_code != 429:
        pass
    read = 0

    def body() -> Iterator[bytes]:
        nonlocal read
        for _ in range(8):
            read += 1
            yield b"\0" * 65536

    headers = {**scanner, "content-type": "multipart/form-data; boundary=xyz", "content-length": str(8 * 65536)}
    response = limited.post("/v1/scan", content=body(), headers=headers)
    assert response.status_code == 429 and read == 0
    assert response.headers["connection"] == "close"
