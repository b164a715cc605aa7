"""API keys: random, shown once, stored as SHA-256 digests; each has a role and, for brand keys, its brands."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import JSON, Engine, String, select
from sqlalchemy.orm import Mapped, mapped_column, sessionmaker

from reference_catalog.database import Base
from reference_catalog.text import control_character

Role = Literal["admin", "brand", "scanner"]
ROLES: tuple[str, ...] = ("admin", "brand", "scanner")
TOKEN_PREFIX = "cs_"
MAX_KEY_NAME = 200


class ApiKey(Base):
    __tablename__ = "api_keys"
    key_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))
    brands: Mapped[list[str]] = mapped_column(JSON)
    secret_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's id, role and (for brand keys) its brands. What it may do: service/access/policy.py."""

    key_id: str
    role: Role
    brands: frozenset[str]

    @property
    def is_brand(self) -> bool:
        return self.role == "brand"


LOCAL_ADMIN = Principal("local-admin (auth disabled)", "admin", frozenset())


class ApiKeyStore:
    """Keys in the catalog database. `cache_s` > 0 keeps a successful authentication for that long, so that a busy
    scanner is not a database read per request; a key revoked through this store stops at once, one revoked by
    another process (`counterfeit-scan keys revoke`) within `cache_s`."""

    CACHE_MAX_ENTRIES = 4096

    def __init__(self, engine: Engine, cache_s: float = 0.0) -> None:
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self.cache_s = cache_s
        self._cache: dict[str, tuple[Principal, float]] = {}  # token digest -> (principal, valid until, monotonic)
        self._cache_lock = threading.Lock()

    def create(self, role: str, brands: list[str], name: str) -> tuple[dict[str, Any], str]:
        """A new key: returns its record and the token, which is not stored and cannot be shown again."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        if (role == "brand") != bool(brands):
            raise ValueError("a brand key needs at least one --brand; other roles take none")
        name = name.strip()
        if len(name) > MAX_KEY_NAME:
            raise ValueError(f"the key's name is longer than {MAX_KEY_NAME} characters")
        for field, value in (("name", name), *(("brand", brand) for brand in brands)):
            bad = control_character(value)
            if bad:
                raise ValueError(f"the key's {field} {value!r} contains a control character ({bad})")
        key_id = "key_" + secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        row = ApiKey(
            key_id=key_id,
            name=name,
            role=role,
            brands=sorted(set(brands)),
            secret_sha256=_digest(secret),
            created_at=datetime.now(UTC),
        )
        with self._sessions.begin() as session:
            session.add(row)
        return _public(row), f"{TOKEN_PREFIX}{key_id}_{secret}"

    def cached(self, token: str) -> Principal | None:
        """The principal for a token authenticated less than `cache_s` ago, without touching the database."""
        if self.cache_s <= 0:
            return None
        cached = self._cache.get(_digest(token))
        return cached[0] if cached is not None and cached[1] > time.monotonic() else None

    def authenticate(self, token: str) -> Principal | None:
        """The principal for a token, or None when it is malformed, unknown or revoked."""
        if self.cache_s <= 0:
            return self._authenticate(token)
        principal = self.cached(token)
        if principal is not None:
            return principal
        digest, now = _digest(token), time.monotonic()
        principal = self._authenticate(token)
        with self._cache_lock:
            if principal is None:
                self._cache.pop(digest, None)
            else:
                if len(self._cache) >= self.CACHE_MAX_ENTRIES:
                    self._cache.clear()
                self._cache[digest] = (principal, now + self.cache_s)
        return principal

    def _authenticate(self, token: str) -> Principal | None:
        parts = token.removeprefix(TOKEN_PREFIX).split("_", 2)  # cs_key_<hex>_<secret>
        if not token.startswith(TOKEN_PREFIX) or len(parts) != 3 or parts[0] != "key" or len(token) > 200:
            return None
        key_id, secret = f"key_{parts[1]}", parts[2]
        with self._sessions() as session:
            row = session.get(ApiKey, key_id)
        if row is None or row.revoked_at is not None:
            return None
        if not hmac.compare_digest(row.secret_sha256, _digest(secret)):
            return None
        return Principal(row.key_id, row.role, frozenset(row.brands))  # type: ignore[arg-type]

    def refusal(self, key_id: str) -> str | None:
        """Why `key_id` may no longer act (revoked, or no such key), read from the database, not the cache; None
        while it may. Work done for a key later (an import job) asks before each step. Keys have no expiry."""
        with self._sessions() as session:
            row = session.get(ApiKey, key_id)
        if row is None:
            return f"the key {key_id!r} that submitted it does not exist (any more)"
        if row.revoked_at is not None:
            return f"the key {key_id} that submitted it was revoked at {_public(row)['revoked_at']}"
        return None

    def list(self) -> list[dict[str, Any]]:
        with self._sessions() as session:
            return [_public(row) for row in session.scalars(select(ApiKey).order_by(ApiKey.created_at))]

    def revoke(self, key_id: str) -> dict[str, Any] | None:
        with self._sessions.begin() as session:
            row = session.get(ApiKey, key_id)
            if row is None:
                return None
            if row.revoked_at is None:
                row.revoked_at = datetime.now(UTC)
        with self._cache_lock:
            self._cache = {digest: entry for digest, entry in self._cache.items() if entry[0].key_id != key_id}
        return _public(row)


def _digest(secret: str) -> str:
    # Keys are 256 random bits, so a fast hash is enough: there is nothing to brute-force.
    return hashlib.sha256(secret.encode()).hexdigest()


def _public(row: ApiKey) -> dict[str, Any]:
    def iso(value: datetime | None) -> str | None:
        return None if value is None else value.isoformat()

    return {
        "key_id": row.key_id,
        "name": row.name,
        "role": row.role,
        "brands": list(row.brands),
        "created_at": iso(row.created_at),
        "revoked_at": iso(row.revoked_at),
    }
