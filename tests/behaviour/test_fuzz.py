"""Property-based API fuzzing (schemathesis) against the app's own OpenAPI schema: no request may cause a 5xx, and
every answer is one the document describes: a documented status code, a documented content type, a body (errors
included) that matches the documented schema, documented headers that match theirs.

Every operation of the schema becomes one test, fuzzed in-process over ASGI with an admin key on a short budget
(schemathesis' coverage phase of boundary and invalid values, then `MAX_EXAMPLES` generated requests, plus the HTTP
methods the operation does not allow). The requests are steered deeper than the schema alone would take them:
photo fields often carry real JPEG/PNG/WebP bytes or hostile ones (truncated, a decompression bomb, GIF, empty),
`label` is often a valid one, and path ids are often ids that exist (seeded reference images and a scan), so that
uploads, scans, fetches, feedback that adds fakes and deletes succeed too, not only their 4xx paths.
Afterwards the catalog and the index must still agree.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import checks

from embeddings import ImageEmbedder
from service.app import create_app
from service.config import Settings
from service.core import ServiceCore
from service.scanning.photo_prep import PhotoInput
from tests import imaging
from tests.helpers import tiny_settings

MAX_EXAMPLES = 20

PHOTOS: list[bytes] = [
    imaging.jpeg(101),
    imaging.png(102),
    imaging.webp(103),
    imaging.jpeg(104, (64, 48)),
    imaging.truncated_jpeg(105),
    imaging.png_claiming_size(60_000, 60_000),
    imaging.gif(106),
    b"",
]
SEEDED = ((1, "authentic"), (2, "counterfeit"), (3, "authentic"))

# Ids that exist, refreshed before each operation's test, so that generated paths often reach real records.
KNOWN_IDS: dict[str, list[str]] = {"image_id": [], "scan_id": []}

# The schema comes from the app factory alone (no core is loaded for it); the requests go to `fuzz_app`.
schema = schemathesis.openapi.from_dict(create_app(tiny_settings(Path("unused"))).openapi())


def _with(body: dict[str, Any], field: str, values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return values.map(lambda value: {**body, field: value})


@schema.hook("flatmap_body")
def _real_photos(context: Any, body: Any) -> Any:
    """Photo fields: the generated value or one of PHOTOS; an upload's label: the generated one or a valid one."""
    if not isinstance(body, dict):
        return st.just(body)
    if "file" in body:
        photo = _with(body, "file", st.sampled_from([body["file"], *PHOTOS]))
        return photo.flatmap(lambda b: _with(b, "label", st.sampled_from([b.get("label"), "authentic", "counterfeit"])))
    if isinstance(body.get("images"), list):
        return st.one_of(st.just(body), _with(body, "images", st.lists(st.sampled_from(PHOTOS), max_size=3)))
    return st.just(body)


@schema.hook("flatmap_path_parameters")
def _known_ids(context: Any, path_parameters: Any) -> Any:
    """Path ids: the generated one, or one that exists."""
    strategy: st.SearchStrategy[Any] = st.just(path_parameters)
    if not isinstance(path_parameters, dict):
        return strategy
    for name, known in KNOWN_IDS.items():
        if name in path_parameters and known:
            strategy = strategy.flatmap(_one_of_known(name, st.sampled_from([path_parameters[name], *known])))
    return strategy


def _one_of_known(name: str, choices: st.SearchStrategy[Any]) -> Callable[[dict[str, Any]], st.SearchStrategy[dict[str, Any]]]:
    return lambda params: _with(params, name, choices)


@dataclass(frozen=True)
class FuzzTarget:
    core: ServiceCore
    settings: Settings
    token: str


@pytest.fixture(scope="module")
def fuzz_target(tiny_embedder: ImageEmbedder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzTarget]:
    """One core for the whole module: the operations share a catalog, as they would in a running service."""
    with pytest.MonkeyPatch.context() as env:
        for key in list(os.environ):
            if key.startswith("COUNTERFEIT_SCAN_"):
                env.delenv(key)
        settings = tiny_settings(tmp_path_factory.mktemp("fuzz") / "data", keep_scan_photos="all")
    core = ServiceCore(settings, tiny_embedder)
    core.index_keeper.sync()
    _, token = core.keys.create("admin", [], "fuzz")
    scanned = core.pipeline.scan([PhotoInput(imaging.jpeg(4), content_type="image/jpeg")], "Acme").model_dump()
    KNOWN_IDS["scan_id"][:] = [scanned["scan_id"]]
    try:
        yield FuzzTarget(core, settings, token)
    finally:
        core.close()
        for known in KNOWN_IDS.values():
            known.clear()


@pytest.fixture
def fuzz_app(fuzz_target: FuzzTarget) -> FastAPI:
    """A fresh app on the shared core for each operation, with the seeded reference images present.

    Schemathesis starts the app's lifespan on the first request and ends it after the test; an app, like a process,
    runs one lifespan, hence one app per test.
    """
    core = fuzz_target.core
    KNOWN_IDS["image_id"][:] = [_seed(core, seed, label) for seed, label in SEEDED]
    return create_app(fuzz_target.settings, core=core)


def _seed(core: ServiceCore, seed: int, label: str) -> str:
    """Add (or find) a seeded reference image, with its seeded label even if a fuzzed PATCH relabelled it."""
    photo = PhotoInput(imaging.jpeg(seed), content_type="image/jpeg")
    existing = core.catalog.find_duplicate("Acme", "runner", hashlib.sha256(photo.data).hexdigest())
    if existing is not None and existing.label != label:
        core.writer.relabel_reference(existing.image_id, label)
    return core.writer.add_reference(photo, "Acme", "runner", label).ref.image_id


CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
    checks.unsupported_method,
]


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
def test_responses_conform_to_the_schema(case: Any, fuzz_app: FastAPI, fuzz_target: FuzzTarget) -> None:
    """No 5xx, and every status, content type, body and header as the OpenAPI document says (errors included)."""
    headers = {"Authorization": f"Bearer {fuzz_target.token}"}
    response = case.call(app=fuzz_app, headers=headers)
    case.validate_response(response, checks=CHECKS, headers=headers)


def test_hostile_credentials_get_401_never_5xx(fuzz_target: FuzzTarget) -> None:
    """The API key is not in the OpenAPI schema, so schemathesis never varies it: fuzz the credentials here."""
    real_prefix = fuzz_target.token.rsplit("_", 1)[0] + "_"  # cs_key_<id>_ of a real key, with any secret after it
    latin1 = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=300)
    values = st.one_of(latin1, latin1.map(lambda secret: real_prefix + secret), st.sampled_from(["cs_key__", "cs_", "_" * 250]))
    schemes = st.sampled_from(["Bearer ", "bearer ", "Basic ", "Token ", "", "Bearer\t"])

    with TestClient(create_app(fuzz_target.settings, core=fuzz_target.core)) as client:

        @settings(max_examples=60, deadline=None, derandomize=True, database=None)
        @given(name=st.sampled_from(["authorization", "x-api-key"]), scheme=schemes, value=values)
        def credentials_are_refused(name: str, scheme: str, value: str) -> None:
            response = client.get("/v1/catalog/brands", headers={name.encode(): (scheme + value).encode("latin-1")})
            assert response.status_code == 401, (name, scheme + value, response.status_code, response.text)

        credentials_are_refused()


def test_still_consistent_after_fuzzing(fuzz_target: FuzzTarget) -> None:
    """After every operation was fuzzed (uploads, deletes, feedback that adds fakes): catalog and index agree."""
    core = fuzz_target.core
    assert set(core.model.index.ids().tolist()) == {ref.key for ref in core.catalog.all_images()}
    assert core.model.index.revision == core.catalog.revision()
