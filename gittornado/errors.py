"""Errors that carry the status a transport should answer with.

Raised anywhere below the transports, mapped once by each transport: HTTP turns
them into the status code, SSH into one stderr line and exit status 128.
"""

from __future__ import annotations

__all__ = [
    "GitAccessError",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "TooManyRequests",
    "PayloadTooLarge",
    "ServiceUnavailable",
]


class GitAccessError(Exception):
    """Base class: ``status`` is the HTTP status, ``str(self)`` the message for the client."""

    status = 500

    def __init__(self, message: str = "", *, log_message: str | None = None) -> None:
        super().__init__(message or self.default_message)
        self.log_message = log_message

    default_message = "internal error"


class BadRequest(GitAccessError):
    status = 400
    default_message = "bad request"


class Unauthorized(GitAccessError):
    """Credentials are needed or were wrong; HTTP adds ``WWW-Authenticate``."""

    status = 401
    default_message = "authentication required"


class Forbidden(GitAccessError):
    status = 403
    default_message = "you may not push to this repository"


class NotFound(GitAccessError):
    status = 404
    default_message = "repository not found"


class PayloadTooLarge(GitAccessError):
    status = 413
    default_message = "request too large"


class TooManyRequests(GitAccessError):
    status = 429
    default_message = "too many failed logins; try again later"

    def __init__(self, retry_after: int, message: str = "") -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServiceUnavailable(GitAccessError):
    """The server cannot take this request now (out of descriptors or processes): try again."""

    status = 503
    default_message = "the server is busy; try again later"

    def __init__(self, message: str = "", retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after
