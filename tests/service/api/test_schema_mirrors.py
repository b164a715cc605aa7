"""Response schemas that mirror an internal record field for field stay in step with it.

The schemas are the HTTP contract and are declared on their own (service/api/schemas.py); the records are what scan
records, /readyz and the model registry serialise. A field added to a record and not to its schema would be dropped
from every answer without an error, so the two lists are compared here.
"""

from __future__ import annotations

from dataclasses import fields
from typing import get_type_hints

import pytest
from pydantic import BaseModel

from embeddings.embedder import ModelInfo
from service.api.schemas import ModelOut, ModelRecordOut
from service.models.registry import ModelRecord


@pytest.mark.parametrize(("record", "schema"), [(ModelInfo, ModelOut), (ModelRecord, ModelRecordOut)])
def test_schema_has_the_records_fields_and_types(record: type, schema: type[BaseModel]) -> None:
    hints = get_type_hints(record)
    declared = {name: info.annotation for name, info in schema.model_fields.items()}
    assert declared == {f.name: hints[f.name] for f in fields(record)}
