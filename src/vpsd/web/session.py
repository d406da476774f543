"""Who is signed in to the panel, CSRF checks, and the panel's cookies and headers.

Every page depends on ``signed_in`` (``PanelUserDep``): no session sends the browser to the
sign-in page (``SignInRequired``). Every request that changes something (POST) must also
carry the session's CSRF token, in the form's ``csrf_token`` field or htmx's
``X-CSRF-Token`` header, and must not come from another site (``CsrfRefused``: 403).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from vpsd.csp import content_security_policy
from vpsd.services.container import Services
from vpsd.services.tokens import Principal
from vpsd.services.web_sessions import PanelSession, find_session

SESSION_COOKIE = "vpsd_session"
SIGN_IN_COOKIE = "vpsd_sign_in"
"""The sign-in form's own CSRF token (double-submit), before any session exists."""
FLASH_COOKIE = "vpsd_flash"
"""A one-line message for the next page (after a form's redirect)."""
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"

CONTENT_SECURITY_POLICY = content_security_policy()
"""The panel's pages load nothing from other origins and run no inline script or style."""

PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",  # pages show one account's data: never from a shared cache
}


class SignInRequired(Exception):
    """No live session: the browser is sent to the sign-in page."""


class CsrfRefused(Exception):
    """A POST without this session's CSRF token, or from another site: 403, nothing done."""


@dataclass(frozen=True, slots=True)
class PanelUser:
    """The signed-in account of a panel request, and its session."""

    session: PanelSession

    @property
    def principal(self) -> Principal:
        """The account, as the services take it."""
        return self.session.principal

    @property
    def account_id(self) -> int:
        """The account's id."""
        return self.session.principal.account_id


def services_of(request: Request) -> Services:
    """The app's services (``vpsd.runtime.app``)."""
    services: Services = request.app.state.services
    return services


async def signed_in(request: Request) -> PanelUser:
    """The panel user of ``request``; ``SignInRequired`` without a live session, and
    ``CsrfRefused`` for a POST without its CSRF token or from another site."""
    secret = request.cookies.get(SESSION_COOKIE, "")
    # A blocking query: off the event loop, as FastAPI runs the API's plain-def routes.
    db = services_of(request).db
    session = await run_in_threadpool(find_session, db, secret) if secret else None
    if session is None:
        raise SignInRequired
    if request.method not in ("GET", "HEAD"):
        await check_csrf(request, session.csrf_matches)
    user = PanelUser(session)
    request.state.panel_user = user  # for an error page's header (render.problem)
    return user


PanelUserDep = Annotated[PanelUser, Depends(signed_in)]


async def check_csrf(request: Request, matches: Callable[[str | None], bool]) -> None:
    """``CsrfRefused`` unless the request carries a token ``matches`` accepts (form field or
    header) and the browser does not say it came from another site."""
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        raise CsrfRefused
    sent = request.headers.get(CSRF_HEADER)
    if sent is None:
        form = await request.form()
        field = form.get(CSRF_FIELD)
        sent = field if isinstance(field, str) else None
    if not matches(sent):
        raise CsrfRefused


def set_cookie(
    response: Response, request: Request, name: str, value: str, max_age: int | None
) -> None:
    """Set one of the panel's cookies: HttpOnly, SameSite=Lax, Secure unless the operator
    turned that off (``VPSD_WEB_SECURE_COOKIES``)."""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="lax",
        secure=services_of(request).settings.web_secure_cookies,
    )


def flash(response: Response, request: Request, message: str) -> None:
    """Show ``message`` on the next page the browser opens."""
    set_cookie(response, request, FLASH_COOKIE, quote(message[:300]), max_age=60)


def sign_in_url(request: Request) -> str:
    """The sign-in page, returning to this page (when it is a panel page) afterwards."""
    target = request.url.path
    if request.method != "GET" or request.headers.get("HX-Request") or not target.startswith("/"):
        return "/sign-in"
    return f"/sign-in?next={quote(target)}"
