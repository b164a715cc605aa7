"""Scan records: what was scanned (input hashes), with which model and index, and what was answered."""

from __future__ import annotations

import json
import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Engine, Float, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker


class ScanRecordBase(DeclarativeBase):
    pass


class ScanRecord(ScanRecordBase):
    __tablename__ = "scan_records"
    scan_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    listing_id: Mapped[str | None] = mapped_column(String(200), index=True)
    created_at: Mapped[datetime] = mapped_column(index=True)
    verdict: Mapped[str] = mapped_column(String(40), index=True)
    risk: Mapped[float | None] = mapped_column(Float)
    model_fingerprint: Mapped[str] = mapped_column(String(64))
    index_version: Mapped[str] = mapped_column(String(80))
    input_sha256: Mapped[list[str]] = mapped_column(JSON)
    result: Mapped[dict[str, Any]] = mapped_column(JSON)


def new_scan_id() -> str:
    return "scan_" + secrets.token_urlsafe(16)


class ScanRecordStore:
    def __init__(self, engine: Engine) -> None:
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        ScanRecordBase.metadata.create_all(engine)

    def save(self, result: dict[str, Any], created_at: datetime, model_fingerprint: str) -> None:
        record = ScanRecord(
            scan_id=result["scan_id"],
            listing_id=result.get("listing_id"),
            created_at=created_at,
            verdict=result["verdict"],
            risk=result.get("risk"),
            model_fingerprint=model_fingerprint,
            index_version=result["index_version"],
            input_sha256=[image["sha256"] for image in result["images"]],
            result=json.loads(json.dumps(result)),
        )
        with self._sessions.begin() as session:
            session.add(record)

    def get(self, scan_id: str) -> dict[str, Any] | None:
        with self._sessions() as session:
            record = session.get(ScanRecord, scan_id)
            return dict(record.result) if record else None
