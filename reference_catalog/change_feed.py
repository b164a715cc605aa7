"""The catalog's revision and change feed: the part of `CatalogRepository` that replicas follow each other by.

Every catalog write takes the next revision (`_record_changes`, last in its transaction) and records the images it
added, relabelled or deleted under it (`catalog_changes`); `changes_since(r)` tells a reader what changed after r, or
None when the feed cannot (it starts after `changes_from`: older rows were pruned, or written before the feed).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from reference_catalog.models import CatalogChange, CatalogState
from reference_catalog.records import ChangeAction, ChangeBatch


class ChangeFeed:
    """Mixed into CatalogRepository, whose constructor sets `_sessions` and `_written`."""

    _sessions: sessionmaker[Session]
    _written: threading.local

    def revision(self) -> int:
        with self._sessions() as session:
            return _state(session, "revision")

    def changes_from(self) -> int:
        """The revision the change feed starts after: revisions up to it have no rows (before the feed, or pruned)."""
        with self._sessions() as session:
            return _state(session, "changes_from")

    def written_revision(self) -> int | None:
        """The revision the calling thread's last catalog write made; None when that write changed nothing (all its
        rows were there already, a relabel to the same label, a delete of nothing). Like a cursor's `lastrowid`: read
        it right after the write, on the same thread (the service's writers do, under their write lock)."""
        return getattr(self._written, "revision", None)

    def changes_since(self, revision: int) -> ChangeBatch | None:
        """The images changed after `revision`, up to the current revision, each with its latest action; None when
        the feed cannot say (`revision` is at or before its start, or after the current revision: a database that
        was replaced), and the reader must re-read the catalog instead.

        Safe against concurrent writers on PostgreSQL's READ COMMITTED as on SQLite: the current revision is read
        first, then the rows up to it. Writers take revisions in commit order (`_bump_revision`), so every revision
        up to the one read is committed and visible to the later statement; rows of revisions after it are left for
        the next call. The feed's start is read again at the end: a prune that removed rows meanwhile says so."""
        with self._sessions() as session:
            current, start = _state(session, "revision"), _state(session, "changes_from")
            if revision < start or revision > current:
                return None
            changes: dict[int, ChangeAction] = {}
            if current > revision:
                rows = session.execute(
                    select(CatalogChange.image_key, CatalogChange.action)
                    .where(CatalogChange.revision > revision, CatalogChange.revision <= current)
                    .order_by(CatalogChange.revision, CatalogChange.id)
                )
                for key, action in rows:
                    changes[int(key)] = cast(ChangeAction, action)  # the latest wins
                if _state(session, "changes_from") > revision:
                    return None
            return ChangeBatch(current, changes)

    def prune_changes(self, keep_after_revision: int) -> int:
        """Delete the change feed's rows up to `keep_after_revision` and start the feed after it (a reader whose index
        is older then re-reads the catalog); returns the rows deleted. Nothing is written when the feed starts there
        already, so replicas may all call it on a timer."""
        with self._sessions.begin() as session:
            if keep_after_revision <= _state(session, "changes_from"):
                return 0
            deleted = session.execute(delete(CatalogChange).where(CatalogChange.revision <= keep_after_revision))
            moved = session.execute(
                update(CatalogState)
                .where(CatalogState.key == "changes_from", CatalogState.value < keep_after_revision)
                .values(value=keep_after_revision)
            )
            if not rowcount(moved) and session.get(CatalogState, "changes_from") is None:
                session.add(CatalogState(key="changes_from", value=keep_after_revision))
            return rowcount(deleted)

    def _record_changes(self, session: Session, action: ChangeAction, keys: Sequence[int]) -> int:
        """Take the next revision and write the feed's rows of this transaction under it; returns the revision."""
        revision = self._bump_revision(session)
        session.execute(insert(CatalogChange), [{"revision": revision, "image_key": key, "action": action} for key in keys])
        return revision

    def _bump_revision(self, session: Session) -> int:
        """Add one to the revision in one statement (an upsert: the first write creates the row) and return it.

        The statement locks the revision row until this transaction ends: a concurrent writer waits there, then reads
        the committed value (PostgreSQL's READ COMMITTED re-reads a row it waited for), so no two writers take the
        same revision and revisions are committed in their order, which `changes_since` relies on. It comes last in
        the transaction, after the data, so that writers queue on it for as short a time as possible (only the feed's
        rows, which need the revision, are written after it)."""
        dialects: dict[str, Any] = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}
        upsert = dialects.get(session.get_bind().dialect.name)
        if upsert is not None:
            statement = (
                upsert(CatalogState)
                .values(key="revision", value=1)
                .on_conflict_do_update(index_elements=[CatalogState.key], set_={"value": CatalogState.value + 1})
                .returning(CatalogState.value)
            )
            return int(session.execute(statement).scalar_one())
        bumped = session.execute(
            update(CatalogState)
            .where(CatalogState.key == "revision")
            .values(value=CatalogState.value + 1)
            .returning(CatalogState.value)
        ).scalar_one_or_none()
        if bumped is None:
            session.add(CatalogState(key="revision", value=1))
            session.flush()
            return 1
        return int(bumped)


def _state(session: Session, key: str) -> int:
    """A `catalog_state` counter (0 when it has no row yet)."""
    value = session.scalar(select(CatalogState.value).where(CatalogState.key == key))
    return int(value or 0)


def rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)
