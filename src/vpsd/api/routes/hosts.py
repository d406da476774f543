"""``/api/v1/hosts/``: the hypervisor hosts, for admin tokens only (tenants get 404)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request

from vpsd.api.deps import DIGITS_ONLY, PageDep, PrincipalDep, ServicesDep
from vpsd.api.pagination import page_links
from vpsd.api.presenters import host_out
from vpsd.api.responses import responses
from vpsd.api.routing import ApiRoute
from vpsd.schemas import MAX_ID, HostOut, Page
from vpsd.services.errors import NotFound
from vpsd.services.tokens import Principal

router = APIRouter(prefix="/hosts", tags=["hosts"], route_class=ApiRoute)
HostId = Annotated[int, Path(ge=1, le=MAX_ID, description="the host's id"), DIGITS_ONLY]


def _require_admin(principal: Principal) -> None:
    # 404, as for any other object a token may not see: tenants learn nothing of hosts.
    if not principal.is_admin:
        raise NotFound("not found")


@router.get("/", operation_id="listHosts", responses=responses(400, 401, 404))
def list_hosts(
    request: Request, principal: PrincipalDep, services: ServicesDep, page: PageDep
) -> Page[HostOut]:
    """The hypervisor hosts, newest first (admins only)."""
    _require_admin(principal)
    hosts = services.hosts.list()
    shown = hosts[page.offset : page.offset + page.page_size]
    next_url, previous_url = page_links(request, page, len(hosts))
    return Page[HostOut](
        count=len(hosts),
        next=next_url,
        previous=previous_url,
        results=[host_out(host) for host in shown],
    )


@router.post("/{host_id}/drain/", operation_id="drainHost", responses=responses(400, 401, 404))
def drain_host(host_id: HostId, principal: PrincipalDep, services: ServicesDep) -> HostOut:
    """Send no new servers to the host; its servers stay and keep working (admins only)."""
    _require_admin(principal)
    return host_out(services.hosts.drain(host_id))


@router.post("/{host_id}/undrain/", operation_id="undrainHost", responses=responses(400, 401, 404))
def undrain_host(host_id: HostId, principal: PrincipalDep, services: ServicesDep) -> HostOut:
    """Take new servers on the host again, after a drain (admins only)."""
    _require_admin(principal)
    return host_out(services.hosts.undrain(host_id))
