"""Signing in (a password, or an API token) and out of the panel."""

from __future__ import annotations

import asyncio
import hmac
import math
import secrets
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from vpsd.services.errors import Invalid
from vpsd.services.sign_in_throttle import SignInThrottle
from vpsd.services.tokens import Principal
from vpsd.services.web_sessions import (
    change_password,
    check_password,
    check_token,
    close_session,
    find_session,
    has_password,
    open_session,
)
from vpsd.web.render import STATUS_OF_ERROR, FormErrors, PanelRoute, done, page
from vpsd.web.session import (
    PAGE_HEADERS,
    SESSION_COOKIE,
    SIGN_IN_COOKIE,
    PanelUser,
    PanelUserDep,
    check_csrf,
    services_of,
    set_cookie,
)

router = APIRouter(include_in_schema=False, route_class=PanelRoute)

FAILED = "That account name and password do not match."
NO_COOKIES = (
    "Your browser did not send the sign-in page's cookie back. Allow cookies for this site. "
    "The panel's cookies are Secure: browsers keep them over HTTPS and on localhost only. "
    "Use the panel over HTTPS (the operator can set VPSD_WEB_SECURE_COOKIES=false for plain "
    "HTTP on a trusted network), then try again."
)
FAILED_TOKEN = "That API token is not valid: unknown, mistyped or revoked."  # noqa: S105


def _throttle(request: Request) -> SignInThrottle:
    services = services_of(request)
    settings = services.settings
    return SignInThrottle(services.db, settings.sign_in_attempts, settings.sign_in_window_seconds)


def _too_many(wait: float) -> str:
    minutes = max(1, math.ceil(wait / 60))
    return f"Too many failed sign-ins. Try again in {minutes} minute" + (
        "s." if minutes > 1 else "."
    )


def _safe_next(target: str | None) -> str:
    """Where to go after signing in: a path of this panel only, never another site (no
    ``//host``, and no backslash or control character a browser would drop or turn into
    one)."""
    if (
        target
        and target.startswith("/")
        and not target.startswith("//")
        and target.isprintable()
        and "\\" not in target
    ):
        return target
    return "/servers"


def _sign_in_page(
    request: Request, next_url: str, status: int = 200, **context: Any
) -> HTMLResponse:
    token = request.cookies.get(SIGN_IN_COOKIE) or secrets.token_urlsafe(32)
    response = page(
        request, "sign_in.html", status=status, csrf_token=token, next=next_url, **context
    )
    set_cookie(response, request, SIGN_IN_COOKIE, token, max_age=3600)
    return response


@router.get("/sign-in")
def sign_in_form(request: Request, next: str | None = None) -> Response:
    """The sign-in page (or where ``next`` points, when already signed in)."""
    secret = request.cookies.get(SESSION_COOKIE, "")
    if secret and find_session(services_of(request).db, secret) is not None:
        return RedirectResponse(_safe_next(next), status_code=303, headers=PAGE_HEADERS)
    return _sign_in_page(request, _safe_next(next))


@router.post("/sign-in")
async def sign_in(
    request: Request,
    next: Annotated[str, Form()] = "/servers",
    name: Annotated[str, Form(max_length=200)] = "",
    password: Annotated[str, Form(max_length=2000)] = "",
    token: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    """Check a password (or an API token) and start a session; failures are counted per
    client address and account name, and too many get 429 for a while."""
    expected = request.cookies.get(SIGN_IN_COOKIE, "")
    if not expected:
        return _sign_in_page(request, _safe_next(next), status=400, error=NO_COOKIES, name=name)
    await check_csrf(
        request,
        # bytes: compare_digest raises on str holding anything but ASCII
        lambda sent: bool(sent and hmac.compare_digest(sent.encode(), expected.encode())),
    )
    services = services_of(request)
    with_token = bool(token.strip())
    address = request.client.host if request.client else "unknown"
    keys = (f"address:{address}",) + (() if with_token else (f"account:{name.strip()}",))
    throttle = _throttle(request)
    wait = await asyncio.to_thread(throttle.retry_after, *keys)
    if wait > 0:
        response = _sign_in_page(
            request, _safe_next(next), status=429, error=_too_many(wait), name=name
        )
        response.headers["Retry-After"] = str(math.ceil(wait))
        return response
    principal: Principal | None
    token_id: int | None = None
    if with_token:
        found = await asyncio.to_thread(check_token, services.db, token)
        principal, token_id = found if found is not None else (None, None)
    elif name.strip() and password:
        principal = await asyncio.to_thread(check_password, services.db, name.strip(), password)
    else:
        return _sign_in_page(
            request,
            _safe_next(next),
            status=400,
            error="Enter your account name and password, or an API token.",
            name=name,
        )
    if principal is None:
        await asyncio.to_thread(throttle.failed, *keys)
        return _sign_in_page(
            request,
            _safe_next(next),
            status=400,
            error=FAILED_TOKEN if with_token else FAILED,
            name=name,
            with_token=with_token,
        )
    await asyncio.to_thread(throttle.succeeded, *keys)
    lifetime = timedelta(hours=services.settings.web_session_hours)
    secret = await asyncio.to_thread(open_session, services.db, principal, lifetime, token_id)
    signed_in = RedirectResponse(_safe_next(next), status_code=303, headers=PAGE_HEADERS)
    set_cookie(signed_in, request, SESSION_COOKIE, secret, int(lifetime.total_seconds()))
    signed_in.delete_cookie(SIGN_IN_COOKIE, path="/")
    return signed_in


@router.post("/sign-out")
def sign_out(request: Request, user: PanelUserDep) -> Response:
    """End the session (on the server, not only in this browser)."""
    close_session(services_of(request).db, user.session.id)
    response = RedirectResponse("/sign-in", status_code=303, headers=PAGE_HEADERS)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def _password_page(
    request: Request, user: PanelUser, status: int = 200, errors: FormErrors | None = None
) -> HTMLResponse:
    return page(
        request,
        "password.html",
        user,
        status=status,
        has_password=has_password(services_of(request).db, user.account_id),
        errors=errors or FormErrors(""),
    )


@router.get("/password")
def password_form(request: Request, user: PanelUserDep) -> Response:
    """The form to change (or first set) the account's panel password."""
    return _password_page(request, user)


@router.post("/password")
async def change_password_form(
    request: Request,
    user: PanelUserDep,
    current_password: Annotated[str, Form(max_length=2000)] = "",
    password: Annotated[str, Form(max_length=2000)] = "",
    password_again: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    """Change the password; every other browser signed in to the account is signed out,
    this one gets a new session. A wrong current password counts as a failed sign-in of
    the account (a session left open must not allow guessing it at speed)."""
    services = services_of(request)
    key = f"account:{user.principal.account_name}"
    throttle = _throttle(request)
    wait = await asyncio.to_thread(throttle.retry_after, key)
    if wait > 0:
        message = _too_many(wait)
        errors = FormErrors(message, {"current_password": message})
        response = await asyncio.to_thread(_password_page, request, user, 429, errors)
        response.headers["Retry-After"] = str(math.ceil(wait))
        return response
    if password != password_again:
        message = "the two new passwords differ; type the same one twice"
        errors = FormErrors(message, {"password_again": message})
        return await asyncio.to_thread(_password_page, request, user, STATUS_OF_ERROR, errors)
    lifetime = timedelta(hours=services.settings.web_session_hours)
    try:
        secret = await asyncio.to_thread(
            change_password, services.db, user.principal, current_password, password, lifetime
        )
    except Invalid as error:
        if error.field == "current_password":
            await asyncio.to_thread(throttle.failed, key)
        errors = FormErrors.of(error)
        return await asyncio.to_thread(_password_page, request, user, STATUS_OF_ERROR, errors)
    await asyncio.to_thread(throttle.succeeded, key)
    changed = done(
        request,
        "/password",
        "Password changed. Every other browser signed in to this account was signed out.",
    )
    set_cookie(changed, request, SESSION_COOKIE, secret, int(lifetime.total_seconds()))
    return changed
