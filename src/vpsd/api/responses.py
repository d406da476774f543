"""The error answers each route documents in the OpenAPI document."""

from __future__ import annotations

from typing import Any

from vpsd.schemas import ErrorBody

DESCRIPTIONS = {
    400: "Bad Request: invalid parameters, or not allowed in the object's current state",
    401: "Unauthorized: missing, invalid or revoked token",
    404: "Not Found: the object does not exist (or is not yours)",
    413: "Request body too large",
    415: "Request body is not JSON",
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, all with the ``ErrorBody`` shape."""
    return {
        status: {"model": ErrorBody, "description": DESCRIPTIONS[status]} for status in statuses
    }
