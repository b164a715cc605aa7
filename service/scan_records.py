"""Scan records: what was scanned (input hashes), with which model and index, and what was answered."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Engine, Float, ForeignKey, String, insert
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


class ScanAccess(ScanRecordBase):
    """Who may read a scan: the key that made it, and the brands it concerns (asked for, or matched first)."""

    __tablename__ = "scan_access"
    scan_id: Mapped[str] = mapped_column(ForeignKey("scan_records.scan_id"), primary_key=True)
    created_by: Mapped[str] = mapped_column(String(80), index=True)
    brands: Mapped[list[str]] = mapped_column(JSON)


def concerned_brands(result: dict[str, Any]) -> list[str]:
    """The brand a scan was restricted to, and the brands of each photo's closest matches."""
    brands = {result["brand"]} if result.get("brand") else set()
    for image in result["images"]:
        brands.update(m["brand"] for m in image["matches"][:3])
        brands.update(d["brand"] for d in image["near_duplicates"])
    return sorted(brands)


def new_scan_id() -> str:
    return "scan_" + secrets.token_urlsafe(16)


class ScanRecordStore:
    def __init__(self, engine: Engine) -> None:
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        ScanRecordBase.metadata.create_all(engine)

    def save(self, result: dict[str, Any], created_at: datetime, model_fingerprint: str, created_by: str = "system") -> None:
        self.save_many([(result, created_at, model_fingerprint, created_by)])

    def save_many(self, records: Sequence[tuple[dict[str, Any], datetime, str, str]]) -> None:
        """Store (result, created_at, model fingerprint, created by) records in one transaction: all or none."""
        if not records:
            return
        rows, access = [], []
        for result, created_at, model_fingerprint, created_by in records:
            rows.append(
                {
                    "scan_id": result["scan_id"],
                    "listing_id": result.get("listing_id"),
                    "created_at": created_at,
                    "verdict": result["verdict"],
                    "risk": result.get("risk"),
                    "model_fingerprint": model_fingerprint,
                    "index_version": result["index_version"],
                    "input_sha256": [image["sha256"] for image in result["images"]],
                    "result": result,
                }
            )
            access.append({"scan_id": result["scan_id"], "created_by": created_by, "brands": concerned_brands(result)})
        with self._sessions.begin() as session:  # Core executemany: one statement per table for the whole batch
            session.execute(insert(ScanRecord), rows)
            session.execute(insert(ScanAccess), access)

    def access(self, scan_id: str) -> tuple[str, list[str]] | None:
        """(created_by, brands) of a scan, or None when there is no such scan."""
        with self._sessions() as session:
            row = session.get(ScanAccess, scan_id)
            if row is not None:
                return row.created_by, list(row.brands)
            return ("system", []) if session.get(ScanRecord, scan_id) is not None else None

    def get(self, scan_id: str) -> dict[str, Any] | None:
        with self._sessions() as session:
            record = session.get(ScanRecord, scan_id)
            return dict(record.result) if record else None
