"""The route class of every ``/api/v1`` route: the caller is authenticated first."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response

from vpsd.api.deps import authenticate
from vpsd.api.strict_json import StrictJSONRoute


class ApiRoute(StrictJSONRoute):
    """A route whose caller must hold a valid token, checked before anything else: a
    request without one gets 401 whatever is wrong with its parameters or body (nothing
    about the API's rules answers a stranger). Then ``StrictJSONRoute``'s body rules.

    Handlers read the principal with ``principal_of(request)`` or ``PrincipalDep``; checking
    here rather than in a dependency spares FastAPI a dependency to solve per request.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def authenticated_handler(request: Request) -> Response:
            authenticate(request)
            return await handler(request)

        return authenticated_handler
