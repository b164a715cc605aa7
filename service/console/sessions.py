"""Console sign-in sessions: a random token in an HTTP-only cookie, stored server-side as a SHA-256 digest.

A session belongs to one API key and ends at its expiry, at sign-out, or as soon as its key is revoked (checked on every
request). The CSRF token of a session is derived from its (secret) token, so it needs no storage of its own.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, String, delete, select
from sqlalchemy.orm import Mapped, mapped_column, sessionmaker

from reference_catalog.database import Base
from service.access.api_keys import LOCAL_ADMIN, ApiKey, Principal

TOKEN_BYTES = 32


class ConsoleSession(Base):
    __tablename__ = "console_sessions"
    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(80), index=True)
    created_at: Mapped[datetime] = mapped_column()
    expires_at: Mapped[datetime] = mapped_column(index=True)


@dataclass(frozen=True)
class SignedIn:
    """A live session: who it is for, the key's name, and the CSRF token its forms must send back."""

    principal: Principal
    key_name: str
    csrf_token: str
    expires_at: datetime


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def csrf_token_for(session_token: str) -> str:
    """The per-session CSRF token: an HMAC of the session's secret, so only the session's holder can know it."""
    return hmac.new(session_token.encode(), b"counterfeit-scan console csrf", hashlib.sha256).hexdigest()


class SessionStore:
    def __init__(self, engine: Engine, ttl_s: int, local_admin: bool = False) -> None:
        """`local_admin`: auth is disabled, so sessions may stand for the local admin instead of a key."""
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self.ttl = timedelta(seconds=ttl_s)
        self.local_admin = local_admin

    def create(self, key_id: str) -> str:
        """A new session for `key_id`; returns its token (only its digest is stored). Drops expired sessions."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        now = datetime.now(UTC)
        with self._sessions.begin() as session:
            session.execute(delete(ConsoleSession).where(ConsoleSession.expires_at < now))
            session.add(ConsoleSession(token_sha256=digest(token), key_id=key_id, created_at=now, expires_at=now + self.ttl))
        return token

    def resolve(self, token: str) -> SignedIn | None:
        """The signed-in user behind a cookie's token, or None: unknown, expired, or its key revoked or gone."""
        if not token or len(token) > 200:
            return None
        with self._sessions.begin() as session:
            row = session.get(ConsoleSession, digest(token))
            if row is None:
                return None
            expires_at = row.expires_at
            if expires_at <= datetime.now(UTC):
                session.delete(row)
                return None
            if self.local_admin and row.key_id == LOCAL_ADMIN.key_id:
                return SignedIn(LOCAL_ADMIN, "local admin (auth disabled)", csrf_token_for(token), expires_at)
            key = session.get(ApiKey, row.key_id)
            if key is None or key.revoked_at is not None:  # a revoked key ends all of its sessions
                session.execute(delete(ConsoleSession).where(ConsoleSession.key_id == row.key_id))
                return None
            principal = Principal(key.key_id, key.role, frozenset(key.brands))  # type: ignore[arg-type]
            return SignedIn(principal, key.name, csrf_token_for(token), expires_at)

    def end(self, token: str) -> None:
        with self._sessions.begin() as session:
            session.execute(delete(ConsoleSession).where(ConsoleSession.token_sha256 == digest(token)))

    def count_for_key(self, key_id: str) -> int:
        with self._sessions() as session:
            return len(session.scalars(select(ConsoleSession.token_sha256).where(ConsoleSession.key_id == key_id)).all())
