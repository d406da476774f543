"""``/api/v1/images/``: the images servers can be created from."""

from __future__ import annotations

from fastapi import APIRouter, Request

from vpsd.api.deps import PageDep, PrincipalDep, ServicesDep
from vpsd.api.pagination import page_links
from vpsd.api.presenters import image_out
from vpsd.api.responses import responses
from vpsd.api.strict_json import StrictJSONRoute
from vpsd.schemas import ImageOut, Page

router = APIRouter(prefix="/images", tags=["images"], route_class=StrictJSONRoute)


@router.get("/", operation_id="listImages", responses=responses(400, 401))
def list_images(
    request: Request, principal: PrincipalDep, services: ServicesDep, page: PageDep
) -> Page[ImageOut]:
    """Images available for new servers (``image`` in ``POST /servers/``), newest first.

    ``blank`` (an empty disk, no guest) is always accepted too and not listed.
    """
    count, rows = services.images.list(page)
    next_url, previous_url = page_links(request, page, count)
    return Page[ImageOut](
        count=count, next=next_url, previous=previous_url, results=[image_out(i) for i in rows]
    )
