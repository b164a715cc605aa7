"""Request errors with the HTTP status that fits, and the one error body every response of the API uses.

Every error, whoever answers it (a route, an exception handler, an ASGI middleware before the app), is
`{"detail": "<one sentence>"}`, plus `"errors": [{"loc", "msg", "type"}]` for request validation errors: the
`ErrorOut` model of service/api/schemas.py, which the OpenAPI document lists for each error status. Build it with
`error_body` (a dict) or `error_response` (a JSONResponse, which is also an ASGI app: a middleware answers with
`await error_response(429, "…", {"Retry-After": "1"})(scope, receive, send)`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from starlette.responses import JSONResponse

from embeddings.errors import ImageRejected
from service.errors import (
    Conflict,
    DomainError,
    Forbidden,
    InvalidRequest,
    InvalidValue,
    NotFound,
    Overloaded,
    TooLarge,
    Unavailable,
    UnsupportedFormat,
)

MAX_LISTED_ERRORS = 5  # validation errors named in `detail`; `errors` lists them all


class RequestRejected(ValueError):
    def __init__(self, detail: str, status: int = 400, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.headers = headers


# The one place where the service's errors (service/errors.py) become HTTP statuses.
STATUS_BY_ERROR: dict[type[DomainError], int] = {
    InvalidRequest: 400,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    TooLarge: 413,
    UnsupportedFormat: 415,
    InvalidValue: 422,
    Overloaded: 429,
    Unavailable: 503,
}


def domain_error_status(exc: DomainError) -> tuple[int, dict[str, str] | None]:
    """The HTTP status (and headers) of a service error: the nearest class in `STATUS_BY_ERROR`, else 400."""
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            status = STATUS_BY_ERROR[cls]
            break
    else:
        status = 400
    if isinstance(exc, Overloaded):
        return status, {"Retry-After": str(exc.retry_after_s)}
    if isinstance(exc, Unavailable):
        return status, {"Retry-After": "5"}
    return status, None


def rejection_status(exc: RequestRejected | DomainError | ImageRejected) -> int:
    """The HTTP status of a refusal, whoever raised it (the API layer, the service, the image decoder): for the
    console's pages, which show a refusal beside what succeeded instead of answering with it."""
    if isinstance(exc, DomainError):
        return domain_error_status(exc)[0]
    return exc.status


def error_body(detail: str, errors: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The API's error body: `{"detail": str}`, with `errors` (loc, msg, type) for request validation errors."""
    body: dict[str, Any] = {"detail": str(detail)}
    if errors is not None:
        body["errors"] = [{"loc": list(e["loc"]), "msg": str(e["msg"]), "type": str(e["type"])} for e in errors]
    return body


def error_response(
    status: int, detail: str, headers: Mapping[str, str] | None = None, errors: Sequence[Mapping[str, Any]] | None = None
) -> JSONResponse:
    """An error answered as JSON in the API's one error shape (see `error_body`)."""
    return JSONResponse(error_body(detail, errors), status_code=status, headers=dict(headers) if headers else None)


def validation_detail(errors: Iterable[Mapping[str, Any]]) -> str:
    """One sentence naming the invalid fields, e.g. `invalid request: body.label: Input should be 'authentic' or …`."""
    parts = [f"{'.'.join(str(part) for part in e['loc'])}: {e['msg']}" for e in errors]
    listed = "; ".join(parts[:MAX_LISTED_ERRORS])
    more = f" (and {len(parts) - MAX_LISTED_ERRORS} more)" if len(parts) > MAX_LISTED_ERRORS else ""
    return f"invalid request: {listed}{more}" if parts else "invalid request"
