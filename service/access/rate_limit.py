"""Per-API-key request rate limits: a token bucket per key, its rate and burst set by the key's role.

In-process: each `serve` process (replica) keeps its own buckets, so N replicas behind a load balancer let a key do up
to N times its limit in all. Buckets exist only for authenticated keys, so their number is bounded by the keys issued.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from service.config import Settings


@dataclass(frozen=True)
class RateLimit:
    """`per_second` requests on average, up to `burst` at once; `per_second` 0: unlimited."""

    per_second: float
    burst: int

    @property
    def unlimited(self) -> bool:
        return self.per_second <= 0

    @property
    def capacity(self) -> float:
        """The bucket's size: `burst`, or (burst 0) one second's worth of requests, at least one."""
        return float(self.burst) if self.burst > 0 else float(max(1, math.ceil(self.per_second)))


def role_limits(settings: Settings) -> dict[str, RateLimit]:
    return {
        "admin": RateLimit(settings.rate_limits.admin_per_s, settings.rate_limits.admin_burst),
        "brand": RateLimit(settings.rate_limits.brand_per_s, settings.rate_limits.brand_burst),
        "scanner": RateLimit(settings.rate_limits.scanner_per_s, settings.rate_limits.scanner_burst),
    }


class RateLimiter:
    """Token buckets per key. `acquire` takes a token, or says how long until one is there."""

    MAX_IDLE_BUCKETS = 10_000  # past this many, buckets that have refilled (idle keys) are dropped

    def __init__(self, limits: Mapping[str, RateLimit], clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = dict(limits)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float, RateLimit]] = {}  # key -> (tokens, as of, its limit)
        self._lock = threading.Lock()

    def acquire(self, key: str, role: str) -> float:
        """0.0 when the request may go ahead (a token was taken); otherwise the seconds until the next token."""
        limit = self.limits.get(role)
        if limit is None or limit.unlimited:
            return 0.0
        now = self.clock()
        with self._lock:
            tokens, since, _ = self._buckets.get(key, (limit.capacity, now, limit))
            tokens = _refilled(tokens, since, limit, now)
            if tokens >= 1.0:
                self._remember(key, tokens - 1.0, now, limit)
                return 0.0
            self._buckets[key] = (tokens, now, limit)
            return (1.0 - tokens) / limit.per_second

    def _remember(self, key: str, tokens: float, now: float, limit: RateLimit) -> None:
        if key not in self._buckets and len(self._buckets) >= self.MAX_IDLE_BUCKETS:
            # a full bucket is the same as no bucket: forget those (keys idle long enough to have refilled)
            self._buckets = {k: v for k, v in self._buckets.items() if _refilled(v[0], v[1], v[2], now) < v[2].capacity}
        self._buckets[key] = (tokens, now, limit)


def _refilled(tokens: float, since: float, limit: RateLimit, now: float) -> float:
    return min(limit.capacity, tokens + (now - since) * limit.per_second)


def retry_after_header(wait_s: float) -> str:
    """Retry-After in whole seconds (at least 1), rounded up so that a client that waits that long gets through."""
    return str(max(1, math.ceil(wait_s)))
