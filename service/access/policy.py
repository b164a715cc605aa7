"""Who may do what: the one access policy of the HTTP API, the web console and the background import jobs.

Every access decision of the service is a function here, over a `Principal` (a key's id, role and brands) and the
facts a rule needs (a scan's creator and brands, an image's brand, a job's submitter), which the caller fetches. The
rules know no HTTP and no database, so the API, the console and the import runner cannot drift apart: each asks the
same function and only words the answer its own way (a JSON error, an error page). A refusal is a service error
(service/errors.py): `Forbidden` where the caller may know the thing exists, `NotFound` where a key must not learn
that another brand's scan, image or job exists (the same answer as for one that does not).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal, TypeVar

from reference_catalog import ImageRef
from service.access.api_keys import Principal, Role
from service.errors import Forbidden, InvalidValue, NotFound
from service.scanning.brand_views import ViewScoring, brand_view
from service.scanning.result import ScanResult

Action = Literal["scan", "feedback", "catalog", "admin", "console"]

# The one table of which roles may do what. Any key may read the scans it may see (`may_read_scan`) and the metrics.
ROLES_FOR: Mapping[Action, tuple[Role, ...]] = MappingProxyType(
    {
        "scan": ("admin", "scanner", "brand"),  # a brand key within its brands (`scan_scope`)
        "feedback": ("admin", "brand"),  # review a scan it may read, for its brands (`review_brand`)
        "catalog": ("admin", "brand"),  # read and change its brands' catalog, import, export
        "admin": ("admin",),  # keys, model rollout, the audit log
        "console": ("admin", "brand"),  # scanner keys belong to scanning pipelines: no console
    }
)

T = TypeVar("T")


# --- roles -------------------------------------------------------------------------------------------------------
def roles_for(action: Action) -> tuple[Role, ...]:
    return ROLES_FOR[action]


def may(principal: Principal, action: Action) -> bool:
    """Does this key's role allow `action` at all? (Which brands, scans or jobs it covers: the rules below.)"""
    return principal.role in ROLES_FOR[action]


def require_role(principal: Principal, action: Action) -> None:
    """Forbidden unless the key's role allows `action`."""
    if not may(principal, action):
        raise Forbidden(f"a {principal.role} key may not do this (needs {' or '.join(ROLES_FOR[action])})")


# --- brands ------------------------------------------------------------------------------------------------------
def visible_brands(principal: Principal) -> frozenset[str] | None:
    """The brands whose catalog and scans a key sees and changes; None: all of them (admin). A scanner key: none."""
    if principal.role == "admin":
        return None
    return principal.brands if principal.is_brand else frozenset()


def may_manage_brand(principal: Principal, brand: str | None) -> bool:
    """May this key see and change `brand`'s catalog (its images, imports into it, its export)?"""
    scope = visible_brands(principal)
    return scope is None or (brand is not None and brand in scope)


def visible(principal: Principal, items: Iterable[T], brand_of: Callable[[T], str]) -> list[T]:
    """The items (brand summaries, products...) of brands this key may see; `brand_of(item)` names an item's brand."""
    return [item for item in items if may_manage_brand(principal, brand_of(item))]


def brand_choices(principal: Principal, catalog_brands: Iterable[str]) -> list[str]:
    """The brands a key may pick from, sorted: those of the catalog it may see, and its own (which may have no images
    yet)."""
    return sorted({b for b in catalog_brands if may_manage_brand(principal, b)} | (visible_brands(principal) or set()))


def narrowed_brands(principal: Principal, brand: str | None) -> frozenset[str] | None:
    """The brands a view shows when the user picks `brand` (None: all it may see): never more than it may see."""
    scope = visible_brands(principal)
    if not brand:
        return scope
    return frozenset({brand}) & scope if scope is not None else frozenset({brand})


def default_brand(principal: Principal, brand: str | None) -> str | None:
    """`brand`, or, when none is given, a brand key's only brand; a key of several brands must say which."""
    if brand is not None or not principal.is_brand:
        return brand
    if len(principal.brands) != 1:
        raise InvalidValue("this key covers several brands: say which one with 'brand'")
    return next(iter(principal.brands))


# --- scans -------------------------------------------------------------------------------------------------------
def scan_scope(principal: Principal, brand: str | None) -> str | None:
    """The brand a scan compares with: brand keys scan within their own brands only, the requested one or their only
    one; other keys scan against `brand` (None: the whole catalog)."""
    scope = default_brand(principal, brand)
    if principal.is_brand and scope not in principal.brands:
        raise Forbidden(f"this key may not scan against {brand!r}")
    return scope


def may_read_scan(principal: Principal, created_by: str, brands: Collection[str]) -> bool:
    """Admins read every scan, a scanner key the scans it made, a brand key the scans that concern its brands."""
    if principal.role == "admin":
        return True
    if principal.role == "scanner":
        return created_by == principal.key_id
    return bool(principal.brands.intersection(brands))


def check_scan_access(principal: Principal, scan_id: str, access: tuple[str, Sequence[str]] | None) -> None:
    """NotFound unless the scan exists (`access`: its creator and brands, None when there is none) and the key may
    read it: the same answer either way, so that a key learns nothing of scans it may not read."""
    if access is None or not may_read_scan(principal, *access):
        raise NotFound(f"no scan {scan_id!r}")


def redact_scan(principal: Principal, result: ScanResult, view: ViewScoring | None = None) -> ScanResult:
    """What a key may see of a scan: brand keys see their brands' view of it (`service.scanning.brand_views`), scored
    again with `view` (without it, the figures that rested on other brands' evidence are withheld)."""
    return brand_view(result, principal.brands, view) if principal.is_brand else result


# --- feedback ----------------------------------------------------------------------------------------------------
def feedback_brands(principal: Principal) -> frozenset[str] | None:
    """The brands whose reviews a key gives and reads: a brand key's own (another brand's review stays that brand's);
    None for admins (any brand) and scanners (all the reviews of their own scans, see `feedback_view`)."""
    return principal.brands if principal.is_brand else None


def feedback_view(principal: Principal, feedback: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a key may see of the reviews of a scan it may read (already limited to `feedback_brands`): the scanner that
    made the scan, each review's verdict and brand without the reviewer's note or the catalog images it added (brands'
    internal matters, not the marketplace pipeline's)."""
    if principal.role == "scanner":
        return [{**item, "note": None, "added_image_ids": []} for item in feedback]
    return feedback


def review_brand(allowed: frozenset[str] | None, scan_brands: Collection[str], brand: str | None) -> str | None:
    """The brand a review is recorded for. `allowed`: the reviewer's brands (`feedback_brands`; None: an admin, who
    reviews for `brand` or else the scan's only brand). A brand key reviews for one of its own brands: `brand`, the one
    of its brands the scan concerns, or its only brand."""
    if allowed is None:
        return brand or (next(iter(scan_brands)) if len(scan_brands) == 1 else None)
    mine = sorted(set(scan_brands) & allowed)
    if brand is not None and brand not in allowed:
        raise Forbidden("this key gives feedback for, and adds known fakes to, its own brands only")
    if brand is None and len(mine) != 1 and len(allowed) != 1:
        raise InvalidValue("this key covers several brands this scan concerns: say which one with 'brand'")
    return brand or (mine[0] if len(mine) == 1 else next(iter(allowed)))


def check_fakes_target(allowed: frozenset[str] | None, target_brands: Collection[str]) -> None:
    """A confirmed fake joins the catalog of a reviewer's own brands only (`allowed` None: an admin, any brand)."""
    if allowed is not None and set(target_brands) - allowed:
        raise Forbidden("this key adds known fakes to its own brands' catalogs only")


# --- catalog -----------------------------------------------------------------------------------------------------
def check_image_access(principal: Principal, image_id: str, ref: ImageRef | None) -> ImageRef:
    """The reference image `image_id` (`ref`, None when there is none) if the key may see it; another brand's image is
    NotFound, exactly like one that does not exist."""
    if ref is None or not may_manage_brand(principal, ref.brand):
        raise NotFound(f"no reference image {image_id!r}")
    return ref


def check_catalog_write(principal: Principal, brand: str) -> None:
    """Forbidden unless the key may add to `brand`'s catalog (the brand is named by the caller: no secret to keep)."""
    if not may_manage_brand(principal, brand):
        raise Forbidden(f"this key may not add to the catalog of {brand!r}")


def check_catalog_brand(principal: Principal, brand: str, known: Collection[str]) -> None:
    """NotFound unless `brand` is in the catalog (`known`) and the key may see it: the same answer for another's."""
    if brand not in known or not may_manage_brand(principal, brand):
        raise NotFound(f"no brand {brand!r} in the catalog")


# --- import jobs -------------------------------------------------------------------------------------------------
def may_read_import(principal: Principal, created_by: str) -> bool:
    """Admins see every import job, other keys the jobs they submitted."""
    return principal.role == "admin" or created_by == principal.key_id


def import_submitter(principal: Principal) -> str | None:
    """Whose import jobs a key lists: its own (its key id), or everyone's (None) for admins."""
    return None if principal.role == "admin" else principal.key_id
