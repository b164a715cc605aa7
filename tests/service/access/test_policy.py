"""The access policy (service/access/policy.py), rule by rule, on plain keys: the decisions the API, the console and the
import jobs used to make each in their own code (the role sets of routes and console sign-in, a brand key's brands, its
scan scope, who reads a scan, an image or an import job, which brand a review is for) are each made here once."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from reference_catalog import ImageRef
from service.access import policy
from service.access.api_keys import LOCAL_ADMIN, ROLES, Principal
from service.errors import Forbidden, InvalidValue, NotFound
from service.scanning.result import ScanResult
from tests.helpers import STORED_MODEL

ADMIN = Principal("key_admin", "admin", frozenset())
SCANNER = Principal("key_scanner", "scanner", frozenset())
ACME = Principal("key_acme", "brand", frozenset({"Acme"}))
ACME_BOLT = Principal("key_acme_bolt", "brand", frozenset({"Acme", "Bolt"}))
EVERY_KEY = (ADMIN, SCANNER, ACME, ACME_BOLT)


def image(brand: str, image_id: str = "ref_1") -> ImageRef:
    return ImageRef(1, image_id, brand, "runner", "authentic", "0" * 64, None, "image/jpeg", 8, 8, datetime.now(UTC))


# --- roles -------------------------------------------------------------------------------------------------------
def test_one_table_says_which_roles_may_do_what() -> None:
    assert all(set(roles) <= set(ROLES) for roles in policy.ROLES_FOR.values())
    expected = {  # action -> (admin, scanner, brand)
        "scan": (True, True, True),
        "feedback": (True, False, True),
        "catalog": (True, False, True),
        "admin": (True, False, False),
        "console": (True, False, True),  # scanner keys are for pipelines: no console
    }
    for action, allowed in expected.items():
        assert tuple(policy.may(key, action) for key in (ADMIN, SCANNER, ACME)) == allowed, action  # type: ignore[arg-type]
    assert policy.may(LOCAL_ADMIN, "admin")


def test_a_role_without_the_right_is_forbidden_with_the_roles_that_have_it() -> None:
    policy.require_role(ACME, "catalog")
    with pytest.raises(Forbidden, match=r"^a scanner key may not do this \(needs admin or brand\)$"):
        policy.require_role(SCANNER, "catalog")
    with pytest.raises(Forbidden, match=r"^a brand key may not do this \(needs admin\)$"):
        policy.require_role(ACME, "admin")


# --- brands ------------------------------------------------------------------------------------------------------
def test_visible_brands_are_all_for_admins_its_own_for_brand_keys_none_for_scanners() -> None:
    assert policy.visible_brands(ADMIN) is None
    assert policy.visible_brands(ACME_BOLT) == frozenset({"Acme", "Bolt"})
    assert policy.visible_brands(SCANNER) == frozenset()


def test_a_brand_is_managed_by_admins_and_its_own_brand_keys_only() -> None:
    assert policy.may_manage_brand(ADMIN, "Acme") and policy.may_manage_brand(ADMIN, None)
    assert policy.may_manage_brand(ACME, "Acme") and not policy.may_manage_brand(ACME, "Bolt")
    assert not policy.may_manage_brand(ACME, None) and not policy.may_manage_brand(SCANNER, "Acme")
    # the visible brands and the brands a key manages are one rule
    for key in EVERY_KEY:
        scope = policy.visible_brands(key)
        for brand in ("Acme", "Bolt", "Zeta"):
            assert policy.may_manage_brand(key, brand) == (scope is None or brand in scope)


def test_lists_keep_the_brands_a_key_may_see() -> None:
    rows = [("Acme", 1), ("Bolt", 2), ("Zeta", 3)]
    assert policy.visible(ACME, rows, lambda row: row[0]) == [("Acme", 1)]
    assert policy.visible(ADMIN, rows, lambda row: row[0]) == rows
    assert policy.visible(SCANNER, rows, lambda row: row[0]) == []


def test_brand_choices_are_the_visible_catalog_brands_and_the_keys_own() -> None:
    catalog = ["Zeta", "Acme"]
    assert policy.brand_choices(ADMIN, catalog) == ["Acme", "Zeta"]
    assert policy.brand_choices(ACME_BOLT, catalog) == ["Acme", "Bolt"]  # Bolt has no images yet: still its own
    assert policy.brand_choices(ACME, []) == ["Acme"]


def test_a_picked_brand_narrows_what_is_shown_never_widens_it() -> None:
    assert policy.narrowed_brands(ACME, None) == frozenset({"Acme"}) and policy.narrowed_brands(ADMIN, None) is None
    assert policy.narrowed_brands(ACME_BOLT, "Bolt") == frozenset({"Bolt"})
    assert policy.narrowed_brands(ACME, "Bolt") == frozenset()  # another brand's: nothing
    assert policy.narrowed_brands(ADMIN, "Bolt") == frozenset({"Bolt"})


def test_a_brand_key_of_one_brand_defaults_to_it_one_of_several_must_say() -> None:
    assert policy.default_brand(ACME, None) == "Acme"
    assert policy.default_brand(ACME_BOLT, "Bolt") == "Bolt"
    assert policy.default_brand(ADMIN, None) is None
    with pytest.raises(InvalidValue, match="covers several brands"):
        policy.default_brand(ACME_BOLT, None)


# --- scans -------------------------------------------------------------------------------------------------------
def test_scan_scope_keeps_brand_keys_within_their_brands() -> None:
    assert policy.scan_scope(ACME, None) == "Acme"
    assert policy.scan_scope(ACME_BOLT, "Bolt") == "Bolt"
    assert policy.scan_scope(ADMIN, None) is None and policy.scan_scope(SCANNER, "Zeta") == "Zeta"
    with pytest.raises(Forbidden, match=r"^this key may not scan against 'Zeta'$"):
        policy.scan_scope(ACME, "Zeta")
    with pytest.raises(InvalidValue, match=r"^this key covers several brands: say which one with 'brand'$"):
        policy.scan_scope(ACME_BOLT, None)


@pytest.mark.parametrize(
    ("key", "created_by", "brands", "readable"),
    [
        (ADMIN, "key_other", ["Bolt"], True),
        (SCANNER, "key_scanner", [], True),  # its own scan
        (SCANNER, "key_other", ["Acme"], False),  # another pipeline's
        (ACME, "key_other", ["Acme", "Bolt"], True),  # concerns its brand
        (ACME, "key_acme", ["Bolt"], False),  # even one it made, once it concerns only another brand
        (ACME_BOLT, "key_other", ["Bolt"], True),
    ],
)
def test_who_may_read_a_scan(key: Principal, created_by: str, brands: list[str], readable: bool) -> None:
    assert policy.may_read_scan(key, created_by, brands) is readable
    if readable:
        policy.check_scan_access(key, "scan_1", (created_by, brands))
    else:
        with pytest.raises(NotFound, match=r"^no scan 'scan_1'$"):
            policy.check_scan_access(key, "scan_1", (created_by, brands))


def test_a_scan_that_does_not_exist_and_one_a_key_may_not_read_look_the_same() -> None:
    with pytest.raises(NotFound) as missing:
        policy.check_scan_access(ADMIN, "scan_x", None)
    with pytest.raises(NotFound) as hidden:
        policy.check_scan_access(ACME, "scan_x", ("key_other", ["Bolt"]))
    assert str(missing.value) == str(hidden.value)


def shared_scan() -> ScanResult:
    def match(brand: str, similarity: float) -> dict[str, Any]:
        return {"image_id": f"ref_{brand}", "brand": brand, "product": "runner", "label": "counterfeit", "similarity": similarity}

    photo = dict.fromkeys(("risk", "score", "nearest_authentic", "nearest_counterfeit", "margin"), 0.9)
    return ScanResult.model_validate({
        "scan_id": "scan_1", "listing_id": None, "created_at": "2026-12-05T00:00:00+00:00", "brand": None, "product": None,
        "verdict": "likely_counterfeit",
        "risk": 0.9,
        "score": 0.9,
        "calibrated": False,
        "calibration": None,
        "features": {"nearest_counterfeit": 0.99},
        "model": STORED_MODEL, "index_version": "v1", "photos_kept": False,
        "authenticity_head": None,
        "reasons": [],
        "images": [{"sha256": "0" * 64, **photo, "in_catalog": True, "matches": [match("Acme", 0.5), match("Bolt", 0.99)],
                    "near_duplicates": []}],
    })  # fmt: skip


def test_brand_keys_see_their_brands_view_of_a_scan_others_all_of_it() -> None:
    result = shared_scan()
    assert policy.redact_scan(ADMIN, result) is result and policy.redact_scan(SCANNER, result) is result
    seen = policy.redact_scan(ACME, result)
    assert [m.brand for m in seen.images[0].matches] == ["Acme"]
    assert seen.risk is None and seen.verdict == "needs_review"  # Bolt's evidence is neither shown nor counted
    assert seen.reasons[-1].code == "other_brands_evidence_removed"
    assert [m.brand for m in policy.redact_scan(ACME_BOLT, result).images[0].matches] == ["Acme", "Bolt"]


# --- feedback ----------------------------------------------------------------------------------------------------
def test_reviews_are_given_and_read_for_a_brand_keys_own_brands() -> None:
    assert policy.feedback_brands(ACME_BOLT) == frozenset({"Acme", "Bolt"})
    assert policy.feedback_brands(ADMIN) is None and policy.feedback_brands(SCANNER) is None


def test_a_scanner_reads_the_verdicts_on_its_scans_without_the_brands_notes() -> None:
    review = {"verdict": "confirmed_counterfeit", "brand": "Acme", "note": "internal", "added_image_ids": ["ref_1"]}
    assert policy.feedback_view(SCANNER, [review]) == [{**review, "note": None, "added_image_ids": []}]
    assert policy.feedback_view(ACME, [review]) == [review] and policy.feedback_view(ADMIN, [review]) == [review]


def test_the_brand_a_review_is_for() -> None:
    acme, acme_bolt = policy.feedback_brands(ACME), policy.feedback_brands(ACME_BOLT)
    assert policy.review_brand(None, ["Acme"], None) == "Acme"  # an admin: the scan's only brand
    assert policy.review_brand(None, ["Acme", "Bolt"], None) is None
    assert policy.review_brand(None, ["Acme"], "Zeta") == "Zeta"
    assert policy.review_brand(acme, ["Acme", "Bolt"], None) == "Acme"  # a brand key: its own
    assert policy.review_brand(acme, [], None) == "Acme"  # its only brand
    assert policy.review_brand(acme_bolt, ["Bolt", "Zeta"], None) == "Bolt"  # the one of its brands the scan concerns
    with pytest.raises(Forbidden, match="its own brands only"):
        policy.review_brand(acme, ["Acme"], "Bolt")
    with pytest.raises(InvalidValue, match="say which one"):
        policy.review_brand(acme_bolt, ["Acme", "Bolt"], None)


def test_known_fakes_join_a_reviewers_own_brands_catalogs_only() -> None:
    policy.check_fakes_target(None, {"Zeta"})
    policy.check_fakes_target(frozenset({"Acme"}), {"Acme"})
    with pytest.raises(Forbidden, match="own brands' catalogs only"):
        policy.check_fakes_target(frozenset({"Acme"}), {"Acme", "Bolt"})


# --- catalog -----------------------------------------------------------------------------------------------------
def test_another_brands_image_is_not_found_like_a_missing_one() -> None:
    ref = image("Acme")
    assert policy.check_image_access(ACME, "ref_1", ref) is ref and policy.check_image_access(ADMIN, "ref_1", ref) is ref
    for key, found in ((ACME, image("Bolt")), (SCANNER, ref), (ACME, None)):
        with pytest.raises(NotFound, match=r"^no reference image 'ref_1'$"):
            policy.check_image_access(key, "ref_1", found)


def test_adding_to_another_brands_catalog_is_forbidden() -> None:
    policy.check_catalog_write(ACME, "Acme")
    policy.check_catalog_write(ADMIN, "Zeta")
    with pytest.raises(Forbidden, match=r"^this key may not add to the catalog of 'Bolt'$"):
        policy.check_catalog_write(ACME, "Bolt")


def test_another_brand_and_an_unknown_brand_are_both_not_in_the_catalog() -> None:
    policy.check_catalog_brand(ACME, "Acme", {"Acme", "Bolt"})
    for brand in ("Bolt", "Zeta"):
        with pytest.raises(NotFound, match=rf"^no brand '{brand}' in the catalog$"):
            policy.check_catalog_brand(ACME, brand, {"Acme", "Bolt"})
    with pytest.raises(NotFound):
        policy.check_catalog_brand(ADMIN, "Zeta", {"Acme"})


# --- import jobs -------------------------------------------------------------------------------------------------
def test_import_jobs_are_their_submitters_and_the_admins() -> None:
    assert policy.may_read_import(ADMIN, "key_acme") and policy.may_read_import(ACME, "key_acme")
    assert not policy.may_read_import(ACME_BOLT, "key_acme")
    assert policy.import_submitter(ADMIN) is None and policy.import_submitter(ACME) == "key_acme"
