"""The SDK's exceptions: one base class, API errors typed by HTTP status, and wait outcomes.

Every exception's ``str()`` is one line a person can read, so callers (vpsctl among them)
can show it as it is.
"""

from __future__ import annotations

from typing import Any

from vpsd.schemas import FieldError


class VpsdClientError(Exception):
    """Base of every error the SDK raises on purpose."""


class ApiError(VpsdClientError):
    """The API answered with an error status; ``status``, ``detail`` and field ``errors``."""

    def __init__(self, status: int, detail: str, errors: list[FieldError] | None = None) -> None:
        self.status = status
        self.detail = detail
        self.errors = errors or []
        super().__init__(self.message)

    @property
    def message(self) -> str:
        """The detail, plus each field error the detail does not already mention."""
        extra = [f"{e.field}: {e.message}" for e in self.errors if e.message not in self.detail]
        return f"{self.detail} ({'; '.join(extra)})" if extra else self.detail


class BadRequestError(ApiError):
    """400: invalid parameters, a limit reached, or not allowed in the object's state."""


class AuthenticationError(ApiError):
    """401: the token is missing, unknown or revoked."""


class NotFoundError(ApiError):
    """404: the object does not exist, or belongs to another account."""


class ConnectionFailed(VpsdClientError):
    """The API could not be reached (refused, DNS, TLS, timeout); the message names the URL."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"cannot connect to {url}: {reason}")


class OperationFailed(VpsdClientError):
    """A waited-for operation ended in failure: a ``failed`` snapshot, a server in ``error``.

    ``status_reason`` is the API's explanation; ``resource`` the object as last seen.
    """

    def __init__(self, what: str, status_reason: str | None, resource: Any = None) -> None:
        self.what = what
        self.status_reason = status_reason
        self.resource = resource
        super().__init__(f"{what} failed: {status_reason or 'no reason given'}")


class WaitTimeout(VpsdClientError, TimeoutError):
    """A wait ran out of time; ``last_status`` was seen last (the work goes on server-side)."""

    def __init__(self, what: str, timeout: float, last_status: str | None) -> None:
        self.what = what
        self.timeout = timeout
        self.last_status = last_status
        super().__init__(
            f"timed out after {timeout:g} s waiting for {what} (last status: {last_status})"
        )


ERROR_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    404: NotFoundError,
}


def api_error(status: int, body: Any, text: str) -> ApiError:
    """The typed exception for an error answer; tolerates bodies not in the API's shape."""
    cls = ERROR_BY_STATUS.get(status, ApiError)
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        raw_errors = body.get("errors")
        errors = [
            FieldError(field=str(e.get("field", "")), message=str(e.get("message", "")))
            for e in (raw_errors if isinstance(raw_errors, list) else [])
            if isinstance(e, dict)
        ]
        return cls(status, body["detail"], errors)
    snippet = " ".join(text.split())[:200]
    return cls(status, f"HTTP {status}" + (f": {snippet}" if snippet else ""))
