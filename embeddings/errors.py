"""Errors raised by the embeddings package, each carrying what the caller needs to answer a user."""


class ModelLoadError(RuntimeError):
    """The configured model or its weights could not be loaded; the message says which setting to fix."""


class ImageRejected(ValueError):
    """An input image was refused. `status` is the HTTP status that fits (400, 413 or 415)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
