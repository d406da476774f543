"""``next``/``previous`` links for lists, beside the page's ``count`` and ``results``."""

from __future__ import annotations

from starlette.requests import Request

from vpsd.services.common import PageRequest


def page_links(request: Request, page: PageRequest, count: int) -> tuple[str | None, str | None]:
    """The URLs of the next and previous pages, None where there is none."""
    last_page = max(1, -(-count // page.page_size))
    next_url = (
        str(request.url.include_query_params(page=page.page + 1)) if page.page < last_page else None
    )
    previous_url = (
        str(request.url.include_query_params(page=min(page.page - 1, last_page)))
        if page.page > 1
        else None
    )
    return next_url, previous_url
