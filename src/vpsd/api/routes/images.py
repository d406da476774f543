"""``/api/v1/images/``: the images servers can be created from."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request

from vpsd.api.deps import DIGITS_ONLY, PageDep, PrincipalDep, ServicesDep
from vpsd.api.pagination import page_links
from vpsd.api.presenters import image_out
from vpsd.api.responses import responses
from vpsd.api.routing import ApiRoute
from vpsd.schemas import MAX_ID, ImageOut, Page

router = APIRouter(prefix="/images", tags=["images"], route_class=ApiRoute)
ImageId = Annotated[int, Path(ge=1, le=MAX_ID, description="the image's id"), DIGITS_ONLY]


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


@router.get("/{image_id}/", operation_id="getImage", responses=responses(400, 401, 404))
def get_image(image_id: ImageId, principal: PrincipalDep, services: ServicesDep) -> ImageOut:
    """One image available for new servers."""
    return image_out(services.images.get(image_id))
