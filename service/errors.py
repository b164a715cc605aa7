"""Request errors with the HTTP status that fits; the app turns them into `{"detail": ...}` responses."""


class RequestRejected(ValueError):
    def __init__(self, detail: str, status: int = 400, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.headers = headers


class ServiceNotReady(RuntimeError):
    """The model or index is still loading (or failed to load)."""
