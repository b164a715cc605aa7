"""Per-route request body bounds, enforced while a body streams in, before it is buffered or parsed.

Each route that takes a body has its own bound (`service_body_bounds`): a JSON endpoint needs kilobytes, a scan upload
its photos, an archive import its archive. Any other method and path gets `DEFAULT_BODY_BYTES`.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import error_body
from service.config import Settings

JSON_BODY_BYTES = 64 * 1024  # JSON endpoints: a feedback note, a relabel, a model to activate
FORM_BODY_BYTES = 64 * 1024  # console form posts (sign-in, labels, feedback), URL-encoded or multipart
DEFAULT_BODY_BYTES = 16 * 1024  # anything else: GETs, DELETEs, unknown paths
FORM_SLACK_BYTES = 64 * 1024  # room for the form fields and multipart headers next to an uploaded file


class BodyTooLarge(Exception):
    pass


@dataclass(frozen=True)
class BodyBound:
    """The largest body `method` on `path` (a route template: `/v1/scans/{scan_id}/feedback`) may send."""

    method: str
    path: str
    max_bytes: int


class BodyBounds:
    """A table of per-route bounds; the first entry whose method and path template match wins."""

    def __init__(self, bounds: Iterable[BodyBound], default: int = DEFAULT_BODY_BYTES) -> None:
        self.bounds = list(bounds)
        self.default = default
        self._compiled = [(bound.method.upper(), _template_regex(bound.path), bound.max_bytes) for bound in self.bounds]

    def limit(self, method: str, path: str) -> int:
        method = method.upper()
        for bound_method, pattern, max_bytes in self._compiled:
            if bound_method == method and pattern.fullmatch(path):
                return max_bytes
        return self.default


def route_path(scope: Scope) -> str:
    """The request's path as the routes see it: without the root path the app is mounted under, if any."""
    path: str = scope.get("path", "")
    root_path: str = scope.get("root_path", "")
    return path[len(root_path) :] if root_path and path.startswith(root_path) else path


def _template_regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}/]+\})", template)
    return re.compile("".join("[^/]+" if part.startswith("{") else re.escape(part) for part in parts if part))


def service_body_bounds(settings: Settings) -> BodyBounds:
    """The service's routes and their bounds. `max_request_bytes` (when set) caps all but archive imports."""
    scans = settings.request_byte_limit
    image = min(settings.limits.max_image_bytes + FORM_SLACK_BYTES, scans)
    archive = settings.import_request_byte_limit
    return BodyBounds(
        [
            # HTTP API (service/api/routes/)
            BodyBound("POST", "/v1/scan", scans),
            BodyBound("POST", "/v1/catalog/images", image),
            BodyBound("PATCH", "/v1/catalog/images/{image_id}", JSON_BODY_BYTES),
            BodyBound("POST", "/v1/catalog/imports", archive),
            BodyBound("POST", "/v1/scans/{scan_id}/feedback", JSON_BODY_BYTES),
            BodyBound("POST", "/v1/admin/model/activate", JSON_BODY_BYTES),
            BodyBound("POST", "/v1/admin/model/rollback", JSON_BODY_BYTES),
            # Web console (service/console/): forms, photo drops as big as a scan's photos, archive drops
            BodyBound("POST", "/console/sign-in", FORM_BODY_BYTES),
            BodyBound("POST", "/console/sign-out", FORM_BODY_BYTES),
            BodyBound("POST", "/console/catalog/images", scans),
            BodyBound("POST", "/console/catalog/images/{image_id}/delete", FORM_BODY_BYTES),
            BodyBound("POST", "/console/catalog/images/{image_id}/label", FORM_BODY_BYTES),
            BodyBound("POST", "/console/catalog/imports", archive),
            BodyBound("POST", "/console/scans/{scan_id}/feedback", FORM_BODY_BYTES),
        ]
    )


class BodyLimitMiddleware:
    """413 for a declared Content-Length over the route's bound, and for chunked bodies as soon as they pass it."""

    def __init__(self, app: ASGIApp, bounds: BodyBounds, on_refuse: Callable[[], None] | None = None) -> None:
        self.app = app
        self.bounds = bounds
        self.on_refuse = on_refuse  # e.g. counts the 413 with the service's other rejections

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.bounds.limit(scope["method"], route_path(scope))
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > max_bytes):
            await self._refuse(send, max_bytes)
            return
        received = 0
        exceeded = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    exceeded = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            if not exceeded:  # whatever the app answers to a cut-off body, the client gets the 413
                await send(message)

        with contextlib.suppress(BodyTooLarge):  # raised from our own receive; the 413 follows
            await self.app(scope, limited_receive, guarded_send)
        if exceeded:
            await self._refuse(send, max_bytes)

    async def _refuse(self, send: Send, max_bytes: int) -> None:
        if self.on_refuse is not None:
            self.on_refuse()
        body = json.dumps(error_body(f"request body is larger than {max_bytes} bytes")).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
