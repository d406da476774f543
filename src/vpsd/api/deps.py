"""Injected dependencies: the caller's account, the services, settings, paging."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request
from fastapi.security.utils import get_authorization_scheme_param
from pydantic import BeforeValidator

from vpsd.services.common import PageRequest
from vpsd.services.container import Services
from vpsd.services.tokens import Principal

MAX_PAGE_SIZE = 1000


def _decimal_digits(value: object) -> object:
    # Lax int parsing would let "1.0", "+1", " 1" and "1_0" name object 1 (or 10), so ids
    # would have spellings no client means; only plain digits are ids.
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise ValueError("must be a positive integer in decimal digits")
    return value


DIGITS_ONLY = BeforeValidator(_decimal_digits)
"""Refuses any spelling of an integer but ASCII digits. Put it after ``Path(...)`` or
``Query(...)`` in ``Annotated[int, Query(ge=1), DIGITS_ONLY]``: placed before them, FastAPI
writes their bounds into the OpenAPI document as ``ge``/``le``, which JSON Schema lacks."""

DecimalId = Annotated[int, DIGITS_ONLY]
"""An id in a path or query string: ASCII digits only, then an int."""


async def get_services(request: Request) -> Services:
    """The app's services (set by ``vpsd.api.app.build_api``)."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]

BEARER_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "an API token from `vpsd token create`",
}
"""How every operation authenticates, as the OpenAPI document says (``vpsd.api.openapi``)."""


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


PRINCIPAL_KEY = "vpsd.principal"
"""Where ``authenticate`` leaves the caller's principal in the request's ASGI scope."""


def authenticate(request: Request) -> Principal:
    """The account behind the request's bearer token, or ``HTTPException`` 401; also kept
    in the request's scope for ``principal_of`` and ``get_principal``.

    The header is read as FastAPI's ``HTTPBearer`` does (its parser). ``ApiRoute`` calls
    this for every API route before FastAPI reads the route's parameters, so a request
    without a valid token gets 401 whatever else is wrong with it.
    """
    authorization = request.headers.get("Authorization")
    scheme, credentials = get_authorization_scheme_param(authorization)
    if not (authorization and scheme and credentials) or scheme.lower() != "bearer":
        raise _unauthorized("authentication required: send 'Authorization: Bearer <token>'")
    services: Services = request.app.state.services
    principal = services.authenticate(credentials)
    if principal is None:
        raise _unauthorized("invalid or revoked token")
    request.scope[PRINCIPAL_KEY] = principal
    return principal


def principal_of(request: Request) -> Principal:
    """The caller's principal: the one ``ApiRoute`` found, else ``authenticate``'s answer.

    The hot reads call it instead of depending on ``get_principal``: a dependency costs
    FastAPI a tenth of such a request's time to solve (docs/benchmarks.md)."""
    principal: Principal | None = request.scope.get(PRINCIPAL_KEY)
    return principal if principal is not None else authenticate(request)


async def get_principal(request: Request) -> Principal:
    """The caller's principal (``principal_of``), as a dependency."""
    return principal_of(request)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def get_page(
    page: Annotated[
        int, Query(ge=1, le=1_000_000, description="1-based page number"), DIGITS_ONLY
    ] = 1,
    page_size: Annotated[
        int,
        Query(ge=1, le=MAX_PAGE_SIZE, description="results per page (default 100)"),
        DIGITS_ONLY,
    ] = 100,
) -> PageRequest:
    """Paging parameters, shared by every list, as strict as ids (``page=1.0`` is a 400)."""
    return PageRequest(page=page, page_size=page_size)


PageDep = Annotated[PageRequest, Depends(get_page)]
