"""Links the API gives: ``next``/``previous`` for lists and trailing-slash redirects.

Never built from the request's ``Host`` header (any client sets it, and a cache or a proxy may
pass a forged one on): absolute on ``VPSD_PUBLIC_URL`` when it is set, relative otherwise.
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import RedirectResponse
from starlette.routing import Match, Router
from starlette.types import Receive, Scope, Send

from vpsd.services.common import PageRequest

# RFC 3986 ``pchar`` characters that need no escaping in a path, besides "/".
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


def link(public_url: str | None, path: str, query: str = "") -> str:
    """A link to ``path`` (decoded, as in the ASGI scope) and ``query`` (encoded).

    ``https://vpsd.example/api/v1/...`` with a public URL, else ``/api/v1/...``; the path is
    escaped and never starts with ``//``, so a relative link can never name another host.
    """
    target = "/" + quote(path, safe=_PATH_SAFE).lstrip("/")
    if query:
        target += f"?{query}"
    return f"{public_url}{target}" if public_url else target


def page_links(request: Request, page: PageRequest, count: int) -> tuple[str | None, str | None]:
    """The links to the next and previous pages, None where there is none."""
    public_url: str | None = request.app.state.services.settings.public_url
    last_page = max(1, -(-count // page.page_size))

    def to_page(number: int) -> str:
        url = request.url.include_query_params(page=number)
        return link(public_url, request.scope["path"], url.query)

    next_url = to_page(page.page + 1) if page.page < last_page else None
    previous_url = to_page(min(page.page - 1, last_page)) if page.page > 1 else None
    return next_url, previous_url


class SlashRedirect:
    """The router's fallback: a ``307`` to the same path with its trailing slash added (or
    removed) when that path has a route, else the router's ``404``.

    Starlette's own ``redirect_slashes`` writes an absolute ``location`` from the request's
    ``Host``; this one writes it with ``link``.
    """

    def __init__(self, router: Router, public_url: str | None) -> None:
        self.router = router
        self.public_url = public_url

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "/")
        if scope["type"] == "http" and path != "/":
            other = {**scope, "path": path.rstrip("/") if path.endswith("/") else path + "/"}
            for route in self.router.routes:
                match, _ = route.matches(other)
                if match is not Match.NONE:
                    query = scope.get("query_string", b"").decode("latin-1")
                    location = link(self.public_url, other["path"], query)
                    await RedirectResponse(location)(scope, receive, send)
                    return
        await self.router.not_found(scope, receive, send)


def install_slash_redirects(app: FastAPI, public_url: str | None) -> None:
    """Replace Starlette's trailing-slash redirect by ``SlashRedirect``."""
    app.router.redirect_slashes = False
    app.router.default = SlashRedirect(app.router, public_url)
