"""The whole schema as one metadata: every module that declares a table on `reference_catalog.database.Base`.

Importing them here makes `metadata` complete wherever it is used (autogenerating a new migration, checking that the
migrations build exactly what the code declares); a module that adds a table must be named here.
"""

from __future__ import annotations

from sqlalchemy import MetaData

import reference_catalog.audit
import reference_catalog.models
import service.access.api_keys
import service.console.sessions
import service.imports.job_store
import service.scanning.feedback
import service.scanning.records
from reference_catalog.database import Base

TABLE_MODULES = (
    reference_catalog.models,
    reference_catalog.audit,
    service.scanning.records,
    service.scanning.feedback,
    service.access.api_keys,
    service.imports.job_store,
    service.console.sessions,
)
metadata: MetaData = Base.metadata
