"""Domain errors. The API maps each to one HTTP status in one place (``vpsd.api.errors``)."""

from __future__ import annotations


class DomainError(Exception):
    """Base of errors a user caused; ``str(error)`` is the message they see."""


class NotFound(DomainError):
    """The object does not exist, or belongs to another account (the two look the same)."""


class InvalidState(DomainError):
    """The action is not allowed in the object's current state; nothing was changed."""


class LimitReached(DomainError):
    """A quota (such as snapshots per server) is full; nothing was changed."""


class Invalid(DomainError):
    """A parameter is wrong in a way the schema cannot tell; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
