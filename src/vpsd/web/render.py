"""Rendering the panel's pages: Jinja2 templates from the package, with what every page
shows (the account, its CSRF token, a message left by the last form) and the panel's
security headers."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from datetime import datetime
from importlib.resources import files
from typing import Any
from urllib.parse import unquote

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError

from vpsd.services.errors import DomainError, Invalid, NotFound
from vpsd.validation import validation_message
from vpsd.web.session import (
    FLASH_COOKIE,
    PAGE_HEADERS,
    CsrfRefused,
    PanelUser,
    SignInRequired,
    flash,
    sign_in_url,
)

templates = Jinja2Templates(directory=str(files("vpsd.web") / "templates"))


def _when(value: datetime | str | None) -> str:
    """A time as the panel shows it: ``2026-11-28 14:05 UTC``."""
    if value is None:
        return ""
    if isinstance(value, str):  # a snapshot's time, as the database returned it
        return value.replace("T", " ")[:16] + " UTC"
    return value.strftime("%Y-%m-%d %H:%M UTC")


templates.env.filters["when"] = _when


def page(
    request: Request,
    template: str,
    user: PanelUser | None = None,
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    """``template`` rendered for ``user`` (None on the sign-in page), with the panel's
    headers; a message a form left for this page is shown once."""
    message = request.cookies.get(FLASH_COOKIE)
    response = templates.TemplateResponse(
        request,
        template,
        {
            "user": user,
            "csrf_token": user.session.csrf_token if user else context.pop("csrf_token", ""),
            "flash": unquote(message) if message and not template.startswith("_") else None,
            **context,
        },
        status_code=status,
        headers=PAGE_HEADERS,
    )
    if message and not template.startswith("_"):
        response.delete_cookie(FLASH_COOKIE, path="/")
    return response


def done(request: Request, to: str, message: str) -> RedirectResponse:
    """After a form did its work: back to ``to`` (303, so a reload does not repeat it),
    where ``message`` is shown."""
    response = RedirectResponse(to, status_code=303, headers=PAGE_HEADERS)
    flash(response, request, message)
    return response


class FormErrors:
    """What went wrong with a form, in words: one message for the form, and one per field."""

    def __init__(self, summary: str, fields: dict[str, str] | None = None) -> None:
        self.summary = summary
        self.fields = fields or {}

    @classmethod
    def of(cls, error: DomainError | ValidationError) -> FormErrors:
        """The words of a service's refusal or of a form that does not validate."""
        if isinstance(error, ValidationError):
            fields: dict[str, str] = {}
            for item in error.errors():
                field = ".".join(str(part) for part in item.get("loc", ())) or "form"
                fields.setdefault(field.split(".")[0], validation_message(dict(item)))
            summary = "; ".join(f"{name.replace('_', ' ')}: {m}" for name, m in fields.items())
            return cls(f"Please correct this: {summary}", fields)
        if isinstance(error, Invalid):  # its field named as in the API: body.public_key
            return cls(str(error), {error.field.removeprefix("body."): str(error)})
        return cls(str(error))

    def __bool__(self) -> bool:
        return bool(self.summary)


def confirm(
    request: Request,
    user: PanelUser,
    *,
    title: str,
    consequences: list[str],
    action: str,
    button: str,
    back: str,
    fields: dict[str, str] | None = None,
) -> HTMLResponse:
    """A page asking to confirm a destructive action: what will happen, a button that
    posts to ``action`` (with ``fields``, hidden), and a way back to ``back``."""
    return page(
        request,
        "confirm.html",
        user,
        title=title,
        consequences=consequences,
        action=action,
        button=button,
        back=back,
        fields=fields or {},
    )


STATUS_OF_ERROR = 400
"""A form the service refused is shown again with its errors, as a 400."""


class PanelRoute(APIRoute):
    """The route class of the panel's pages: what would be a JSON error in the API is a
    page here. No session: to the sign-in page (htmx: ``HX-Redirect``). A refused CSRF
    check: 403. Not found, or not this account's (the same to the user), or an id that is
    not one: 404."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def panel_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except SignInRequired:
                if request.headers.get("HX-Request"):
                    headers = {**PAGE_HEADERS, "HX-Redirect": "/sign-in"}
                    return Response(status_code=401, headers=headers)
                return RedirectResponse(sign_in_url(request), 303, headers=PAGE_HEADERS)
            except CsrfRefused:
                return problem(
                    request,
                    403,
                    "This form was refused",
                    "It did not carry this page's security token: it came from another site, "
                    "or the page was open from before you signed in again. Nothing was "
                    "changed. Go back, reload the page and try again.",
                )
            except (NotFound, RequestValidationError):
                return problem(
                    request,
                    404,
                    "Not found",
                    "There is nothing here, or it is not yours. It may have been deleted.",
                )

        return panel_handler


def problem(request: Request, status: int, title: str, explanation: str) -> HTMLResponse:
    """An error page: what happened and what to do, in words."""
    user = getattr(request.state, "panel_user", None)
    return page(request, "problem.html", user, status=status, title=title, explanation=explanation)
