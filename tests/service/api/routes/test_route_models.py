"""Every route says what it answers: a JSON route its `response_model` (the OpenAPI document's schema, and what
FastAPI filters the answer through), a route that answers bytes (an image, an archive, Prometheus text) its response
class and media types, a console route its HTML (or image, or redirect) response class."""

from __future__ import annotations

from pathlib import Path

from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.routing import APIRoute, iter_route_contexts

from service.app import create_app
from tests.helpers import tiny_settings

# The routes that answer something other than JSON on success, with why.
NOT_JSON = {
    ("GET", "/metrics"): Response,  # Prometheus text exposition format
    ("GET", "/v1/catalog/images/{image_id}/content"): Response,  # the image's bytes
    ("GET", "/v1/catalog/export"): StreamingResponse,  # a zip or tar.gz archive, streamed
}
NO_ERRORS = {("GET", "/healthz")}  # liveness: it answers 200 whenever the process answers at all
CONSOLE_CLASSES = (HTMLResponse, Response, RedirectResponse)


def routes() -> list[tuple[str, str, APIRoute]]:
    app = create_app(tiny_settings(Path("unused")))
    found = []
    for context in iter_route_contexts(app.router.routes):
        route = context.original_route
        if isinstance(route, APIRoute):
            found += [(method, str(context.path), route) for method in sorted(context.methods or ())]
    return found


def response_class(route: APIRoute) -> type[Response] | None:
    """The route's declared response class; None when it declares none (FastAPI's default placeholder)."""
    declared = route.response_class
    return declared if isinstance(declared, type) and issubclass(declared, Response) else None


def test_every_json_route_has_a_response_model() -> None:
    api = [(method, path, route) for method, path, route in routes() if not path.startswith("/console")]
    assert len(api) >= 22
    for method, path, route in api:
        if (method, path) in NOT_JSON:
            assert route.response_model is None, f"{method} {path}"
            assert response_class(route) is NOT_JSON[method, path], f"{method} {path}: declare its response class"
            assert "content" in route.responses[200], f"{method} {path}: document the media type it answers"
        else:
            assert route.response_model is not None, f"{method} {path}: no response_model"
            assert response_class(route) in (None, JSONResponse), f"{method} {path}"
            named = route.responses or (method, path) in NO_ERRORS
            assert named, f"{method} {path}: name the error statuses it answers (error_responses)"


def test_every_console_route_declares_its_response_class() -> None:
    console = [(method, path, route) for method, path, route in routes() if path.startswith("/console")]
    assert len(console) >= 17
    for method, path, route in console:
        assert not route.include_in_schema, f"{method} {path}: the console is not part of the API's document"
        assert response_class(route) in CONSOLE_CLASSES, f"{method} {path}: declare response_class (HTML pages)"
