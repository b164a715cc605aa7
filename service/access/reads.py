"""What a key reads of stored scans, reviews and reference images: the core's stores seen through the access policy.

The HTTP API and the console read through these same functions, so what a key sees is decided once (by
service/access/policy.py); each only words a refusal its own way (the API's JSON 404, the console's error page). They
block on the database: call them on a worker thread (`run_in_threadpool`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from reference_catalog import ImageRef
from service.access.api_keys import Principal
from service.access.policy import check_image_access, check_scan_access, feedback_brands, feedback_view, redact_scan
from service.errors import NotFound
from service.scanning.brand_views import view_scoring
from service.scanning.result import ScanResult

if TYPE_CHECKING:
    from service.core import ServiceCore


def require_scan_access(core: ServiceCore, principal: Principal, scan_id: str) -> None:
    """NotFound unless the scan exists and the key may read it (the same answer either way: no hint that it exists)."""
    check_scan_access(principal, scan_id, core.scans.access(scan_id))


def readable_scan(core: ServiceCore, principal: Principal, scan_id: str) -> ScanResult:
    """The stored scan as this key may see it: a brand key, its brands' view, scored again by the serving model."""
    require_scan_access(core, principal, scan_id)
    record = core.scans.get(scan_id)
    if record is None:
        raise NotFound(f"no scan {scan_id!r}")
    return redact_scan(principal, record, view_scoring(core.model, record) if principal.is_brand else None)


def readable_feedback(core: ServiceCore, principal: Principal, scan_id: str) -> list[dict[str, Any]]:
    """The reviews of a scan the key may read, as it may see them (`feedback_brands`, `feedback_view`)."""
    return feedback_view(principal, core.feedback.for_scan(scan_id, feedback_brands(principal)))


def readable_image(core: ServiceCore, principal: Principal, image_id: str) -> ImageRef:
    """A reference image the key may see; another brand's is NotFound, like one that does not exist."""
    return check_image_access(principal, image_id, core.catalog.get_image(image_id))
