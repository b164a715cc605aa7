"""What can go wrong in the service's own terms, with no HTTP in it.

The catalog writer, the scan pipeline, feedback and import jobs raise these; the CLI prints them; the HTTP API maps
each kind to its status in one place (`service/api/errors.py`, `STATUS_BY_ERROR`). A message is one sentence meant for
the caller, safe to show: it names the offending value, never another brand's data.
"""

from __future__ import annotations


class DomainError(ValueError):
    """Base of the service's errors; `str(error)` is the message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(DomainError):
    """The request as a whole cannot be served as sent (no photo, too many photos, nothing to do)."""


class InvalidValue(DomainError):
    """A value in the request is not acceptable (an empty or too long name, an unknown label, a control character)."""


class NotFound(DomainError):
    """What the request names does not exist (a scan, an image, a job)."""


class Conflict(DomainError):
    """The request contradicts what is stored (a photo already catalogued under the other label, a switch under way)."""


class TooLarge(DomainError):
    """What was sent is larger than the service takes (an import archive over its byte limit)."""


class UnsupportedFormat(DomainError):
    """What was sent is not in a format the service reads (an import that is neither zip nor gzip)."""


class Forbidden(DomainError):
    """The caller's key may not do this (another brand's catalog, a role without the right)."""


class Overloaded(DomainError):
    """Too much work is waiting; try again after `retry_after_s` seconds."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(DomainError):
    """The service cannot do this now (its model or index is still loading, a worker died); try again shortly."""


class ServiceNotReady(Unavailable):
    """The model or index is still loading (or failed to load), or the service is shutting down; the API words it
    "service not ready: ..."."""
