"""`import_rows` counts what it wrote: a photo another writer (an HTTP upload, another process) adds between the
import's duplicate check and its write is a duplicate, not an addition, and the counts agree with the audit log."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import event

from service.catalog.writer import ImportRow
from service.config import Settings
from service.core import ServiceCore
from service.scanning.photo_prep import PhotoInput
from tests import imaging
from tests.helpers import sha256

pytestmark = pytest.mark.both_databases  # the tests that use the database run on SQLite and PostgreSQL


def test_rows_another_writer_adds_during_the_import_count_as_duplicates(
    make_core: Callable[[Settings], ServiceCore], settings: Settings
) -> None:
    cli, service = make_core(settings), make_core(settings)  # two writers on one data directory
    photos = [imaging.jpeg(seed) for seed in (11, 12, 13)]
    rows = [
        ImportRow(f"line {i + 2}", PhotoInput(data), "Acme", "runner", "authentic", f"p{i}.jpg") for i, data in enumerate(photos)
    ]
    uploaded: list[bool] = []
    begins = 0

    def upload_during_the_import(*_: Any) -> None:
        """The import checks each row for a duplicate (one transaction each), then writes them all in one more: just
        as that write begins, the service stores the second photo from an HTTP upload."""
        nonlocal begins
        begins += 1
        if begins == len(rows) + 1:
            uploaded.append(
                service.writer.add_reference(PhotoInput(photos[1]), "Acme", "runner", "authentic", actor="http").created
            )

    event.listen(cli.database, "begin", upload_during_the_import)
    try:
        summary = cli.writer.import_rows(rows, actor="cli")
    finally:
        event.remove(cli.database, "begin", upload_during_the_import)

    assert uploaded == [True]  # the upload wrote it, after the import had checked the row
    assert (summary.added, summary.duplicates, summary.errors) == (2, 1, [])
    added_by_cli = cli.audit.query(actor="cli", action="catalog.add")
    assert len(added_by_cli) == summary.added
    assert len(cli.audit.query(actor="http", action="catalog.add")) == 1
    assert sorted(ref.sha256 for ref in cli.catalog.all_images()) == sorted(sha256(d) for d in photos)
    assert len(cli.model.index) == 3  # the importer's index holds the uploaded photo too

    again = cli.writer.import_rows(rows, actor="cli")
    assert (again.added, again.duplicates) == (0, 3)


def test_a_row_another_writer_adds_under_the_other_label_fails_alone(
    make_core: Callable[[Settings], ServiceCore], settings: Settings
) -> None:
    cli, service = make_core(settings), make_core(settings)
    photos = [imaging.jpeg(seed) for seed in (21, 22, 23)]
    rows = [
        ImportRow(f"line {i + 2}", PhotoInput(data), "Acme", "runner", "authentic", f"p{i}.jpg") for i, data in enumerate(photos)
    ]
    begins = 0

    def upload_as_counterfeit(*_: Any) -> None:
        nonlocal begins
        begins += 1
        if begins == len(rows) + 1:  # just as the import's write begins, the photo arrives labelled the other way
            service.writer.add_reference(PhotoInput(photos[1]), "Acme", "runner", "counterfeit", actor="http")

    event.listen(cli.database, "begin", upload_as_counterfeit)
    try:
        summary = cli.writer.import_rows(rows, actor="cli")
    finally:
        event.remove(cli.database, "begin", upload_as_counterfeit)

    assert (summary.added, summary.duplicates) == (2, 0)
    assert summary.errors is not None and [name for name, _ in summary.errors] == ["line 3"]
    assert "already in the catalog as counterfeit" in summary.errors[0][1]
    labels = {ref.sha256: ref.label for ref in cli.catalog.all_images()}
    assert labels == {sha256(photos[0]): "authentic", sha256(photos[1]): "counterfeit", sha256(photos[2]): "authentic"}
    assert len(cli.audit.query(actor="cli", action="catalog.add")) == 2
