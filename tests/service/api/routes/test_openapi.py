"""The OpenAPI document describes the API as it answers: every error status per route, one error shape, enums.

The fuzz test (tests/behaviour/test_fuzz.py) checks real answers against this document for every operation; these tests pin
what the document must say, and that errors of every kind come in the one `ErrorOut` shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.api.schemas import ErrorOut
from service.app import create_app
from tests import imaging
from tests.helpers import tiny_settings

ERROR_REF = "#/components/schemas/ErrorOut"
UNKEYED = {"/healthz", "/readyz"}
ANY_ROLE = {("get", "/metrics"), ("get", "/v1/scans/{scan_id}")}  # any key may call these: no 403
UPLOADS = {("post", "/v1/scan"), ("post", "/v1/catalog/images"), ("post", "/v1/catalog/imports")}
CONFLICTS = {
    ("post", "/v1/catalog/images"),
    ("post", "/v1/scans/{scan_id}/feedback"),
    ("post", "/v1/admin/model/activate"),
    ("post", "/v1/admin/model/rollback"),
}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return create_app(tiny_settings(Path("unused"))).openapi()


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, op) for path, ops in document["paths"].items() for method, op in ops.items()]


def schema_ref(response: dict[str, Any]) -> str | None:
    ref: str | None = response.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref")
    return ref


def test_every_route_documents_the_statuses_it_answers(document: dict[str, Any]) -> None:
    assert len(operations(document)) >= 22
    for method, path, op in operations(document):
        documented = {int(status) for status in op["responses"]}
        expected: set[int] = set()
        if path not in UNKEYED:
            expected |= {401, 429, 503}  # no or a bad key; over the key's rate; loading
            if (method, path) not in ANY_ROLE:
                expected.add(403)
        if "{" in path:
            expected |= {404, 422}
        if op.get("parameters") or "requestBody" in op:
            expected.add(422)
        if "requestBody" in op:
            expected |= {400, 413}  # a body that cannot be parsed; too large
        if (method, path) in UPLOADS:
            expected |= {400, 413, 415}
        if (method, path) in CONFLICTS:
            expected.add(409)
        assert expected <= documented, f"{method.upper()} {path}: {sorted(expected - documented)} undocumented"
        assert any(200 <= status < 300 for status in documented), f"{method.upper()} {path}"


def test_every_error_response_has_the_one_error_shape(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    assert schemas["ErrorOut"]["required"] == ["detail"]
    assert schemas["ErrorOut"]["properties"]["detail"]["type"] == "string"
    assert schemas["ErrorOut"]["properties"]["errors"]["type"] == "array"
    assert set(schemas["ErrorItemOut"]["required"]) == {"loc", "msg", "type"}
    for method, path, op in operations(document):
        for status, response in op["responses"].items():
            if int(status) >= 400:
                expected = "#/components/schemas/NotReadyOut" if path == "/readyz" else ERROR_REF
                assert schema_ref(response) == expected, f"{method.upper()} {path} {status}"
    assert schemas["NotReadyOut"]["properties"]["detail"]["type"] == "string"  # an ErrorOut too


def test_every_success_response_has_a_schema(document: dict[str, Any]) -> None:
    """Admin and audit included: no route answers an undocumented body."""
    for method, path, op in operations(document):
        for status, response in op["responses"].items():
            if 200 <= int(status) < 300:
                content = response.get("content")
                assert content, f"{method.upper()} {path} {status}"
                if "application/json" in content:
                    assert schema_ref(response), f"{method.upper()} {path} {status}: no response model"
    paths = document["paths"]
    assert schema_ref(paths["/v1/admin/model"]["get"]["responses"]["200"]).endswith("/ModelStatusOut")  # type: ignore[union-attr]
    assert schema_ref(paths["/v1/admin/model/activate"]["post"]["responses"]["202"]).endswith("/SwitchOut")  # type: ignore[union-attr]
    assert schema_ref(paths["/v1/audit"]["get"]["responses"]["200"]).endswith("/AuditLogOut")  # type: ignore[union-attr]
    assert set(paths["/v1/catalog/images/{image_id}/content"]["get"]["responses"]["200"]["content"]) == {
        "image/jpeg",
        "image/png",
        "image/webp",
    }
    assert set(paths["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    assert {"200", "201"} <= set(paths["/v1/catalog/images"]["post"]["responses"])  # 200: the same bytes again


def _enum(schema: dict[str, Any]) -> list[str]:
    """The enum of a property, also when it is optional (anyOf with null)."""
    for option in schema.get("anyOf", [schema]):
        if "enum" in option:
            return list(option["enum"])
    raise AssertionError(f"no enum in {schema}")


def test_enums_are_declared(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    labels = ["authentic", "counterfeit"]
    upload = document["paths"]["/v1/catalog/images"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    body = schemas[upload["$ref"].rsplit("/", 1)[1]]
    assert _enum(body["properties"]["label"]) == labels
    for model in ("RelabelIn", "ReferenceImageOut", "MatchOut", "NearDuplicateOut"):
        assert _enum(schemas[model]["properties"]["label"]) == labels, model
    params = {p["name"]: p for p in document["paths"]["/v1/catalog/images"]["get"]["parameters"]}
    assert _enum(params["label"]["schema"]) == labels
    feedback = ["confirmed_counterfeit", "confirmed_authentic", "not_applicable"]
    assert _enum(schemas["FeedbackIn"]["properties"]["verdict"]) == feedback
    assert _enum(schemas["FeedbackOut"]["properties"]["verdict"]) == feedback
    assert set(_enum(schemas["ScanOut"]["properties"]["verdict"])) == {
        "likely_counterfeit",
        "needs_review",
        "likely_authentic",
        "not_in_catalog",
    }
    export = {p["name"]: p for p in document["paths"]["/v1/catalog/export"]["get"]["parameters"]}
    assert _enum(export["format"]["schema"]) == ["zip", "tar.gz"]
    assert _enum(schemas["ImportJobOut"]["properties"]["state"]) == ["queued", "running", "succeeded", "failed"]
    assert _enum(schemas["SwitchOut"]["properties"]["state"]) == ["idle", "preparing", "done", "failed"]
    assert _enum(schemas["ReadyOut"]["properties"]["auth"]) == ["api-keys", "disabled"]


def assert_error_shape(body: Any, validation: bool = False) -> ErrorOut:
    assert isinstance(body, dict) and isinstance(body.get("detail"), str) and body["detail"], body
    assert set(body) == ({"detail", "errors"} if validation else {"detail"}), body
    error = ErrorOut.model_validate(body)
    if validation:
        assert error.errors and all(item.loc and item.msg and item.type for item in error.errors)
    return error


def test_a_validation_error_has_the_error_shape(client: TestClient) -> None:
    response = client.post(
        "/v1/catalog/images",
        files={"file": ("x.jpg", imaging.jpeg(), "image/jpeg")},
        data={"brand": "Acme", "product": "runner", "label": "fake"},
    )
    assert response.status_code == 422 and response.headers["content-type"] == "application/json"
    error = assert_error_shape(response.json(), validation=True)
    assert [(item.loc, item.type) for item in error.errors] == [(["body", "label"], "literal_error")]
    assert error.detail.startswith("invalid request: body.label: ") and "'authentic' or 'counterfeit'" in error.detail

    several = client.get("/v1/audit", params={"limit": 0, "before_id": 0, "since": "yesterday"})
    assert several.status_code == 422
    error = assert_error_shape(several.json(), validation=True)
    assert {tuple(item.loc) for item in error.errors} == {("query", "limit"), ("query", "before_id"), ("query", "since")}
    assert all(f"query.{name}" in error.detail for name in ("limit", "before_id", "since"))

    not_json = client.post("/v1/scans/scan_x/feedback", content=b"{", headers={"content-type": "application/json"})
    assert not_json.status_code == 422
    assert_error_shape(not_json.json(), validation=True)


def test_other_errors_have_the_error_shape(client: TestClient) -> None:
    assert_error_shape(client.get("/v1/catalog/images/ref_nope").json())  # 404 from a route
    unkeyed = client.get("/v1/catalog/brands", headers={"Authorization": ""})
    assert unkeyed.status_code == 401
    assert_error_shape(unkeyed.json())
    not_an_image = client.post(
        "/v1/catalog/images",
        files={"file": ("x.jpg", b"not an image", "image/jpeg")},
        data={"brand": "Acme", "product": "runner", "label": "authentic"},
    )
    assert not_an_image.status_code in (400, 415)
    assert_error_shape(not_an_image.json())
    conflict = client.post("/v1/admin/model/rollback")  # nothing to roll back to
    assert conflict.status_code == 409
    assert_error_shape(conflict.json())
