"""Every error answer in one shape (``ErrorBody``), and domain errors mapped in one place.

``400`` for invalid parameters (never FastAPI's default 422), ``401`` with
``WWW-Authenticate: Bearer``, ``404`` for what does not exist or is not the caller's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vpsd.schemas import ErrorBody, FieldError
from vpsd.services.errors import DomainError, Invalid, InvalidState, LimitReached, NotFound
from vpsd.validation import validation_message

log = logging.getLogger(__name__)

STATUS_OF: dict[type[DomainError], int] = {
    DomainError: 400,
    NotFound: 404,
    InvalidState: 400,
    LimitReached: 400,
    Invalid: 400,
}
"""The one table from domain errors to HTTP statuses: an error takes its nearest class's."""


def status_of(error: DomainError) -> int:
    """The status of ``error``: the entry of the nearest class in its hierarchy."""
    return next(STATUS_OF[cls] for cls in type(error).__mro__ if cls in STATUS_OF)


def error_response(
    status: int,
    detail: str,
    errors: Sequence[FieldError] = (),
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """A JSON error answer in the one documented shape."""
    body = ErrorBody(detail=detail, errors=list(errors))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _field_name(location: Sequence[Any]) -> str:
    return ".".join(str(part) for part in location) or "body"


def validation_errors(exc: RequestValidationError) -> list[FieldError]:
    """FastAPI's validation errors as ``FieldError``s (``body.name``, ``query.server_id``)."""
    errors = []
    for error in exc.errors():
        location = list(error.get("loc", ()))
        if error.get("type") == "json_invalid":
            location = ["body"]
        errors.append(FieldError(field=_field_name(location), message=validation_message(error)))
    return errors


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that give every error the documented shape and status."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = validation_errors(exc)
        summary = "; ".join(f"{e.field}: {e.message}" for e in errors)
        return error_response(400, f"invalid parameters: {summary}", errors)

    @app.exception_handler(DomainError)
    async def _domain(_: Request, exc: DomainError) -> JSONResponse:
        status = status_of(exc)
        errors = [FieldError(field=exc.field, message=str(exc))] if isinstance(exc, Invalid) else []
        return error_response(status, str(exc), errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers) if exc.headers else None
        return error_response(exc.status_code, str(exc.detail), headers=headers)

    # Not an exception handler for Exception: Starlette runs that one in its outermost
    # middleware, which re-raises after answering, and the server then drops the client's
    # keep-alive connection. This middleware answers and keeps the connection usable.
    app.add_middleware(CatchUnexpectedErrors)


class CatchUnexpectedErrors:
    """ASGI middleware: an unhandled error becomes a logged ``500`` in the error shape."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise  # too late for a clean answer; let the server close the connection
            response = error_response(500, "internal error; the service log has the details")
            await response(scope, receive, send)
