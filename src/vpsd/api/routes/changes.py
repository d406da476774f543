"""``/api/v1/changes/``: an update that rolls itself back (a snapshot, a command in the guest,
a health check, and the snapshot restored when either fails)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request

from vpsd.api.deps import DIGITS_ONLY, PageDep, PrincipalDep, ServicesDep
from vpsd.api.pagination import page_links
from vpsd.api.presenters import change_out
from vpsd.api.responses import responses
from vpsd.api.routing import ApiRoute
from vpsd.schemas import MAX_ID, ChangeCreate, ChangeOut, Page

router = APIRouter(prefix="/changes", tags=["changes"], route_class=ApiRoute)
ChangeId = Annotated[int, Path(ge=1, le=MAX_ID, description="the change's id"), DIGITS_ONLY]


@router.post(
    "/", operation_id="createChange", status_code=201, responses=responses(400, 401, 404, 413, 415)
)
def create_change(body: ChangeCreate, principal: PrincipalDep, services: ServicesDep) -> ChangeOut:
    """Snapshot a running server, run ``command`` in its guest as root, check its health, and
    restore the snapshot if the command or the check fails. Needs a free snapshot slot (the
    limit stays 5); poll the change (or follow its output) until it is no longer in
    progress."""
    return change_out(services.changes.create(principal.account_id, body))


@router.get("/", operation_id="listChanges", responses=responses(400, 401))
def list_changes(
    request: Request,
    principal: PrincipalDep,
    services: ServicesDep,
    page: PageDep,
    server_id: Annotated[
        int | None,
        Query(ge=1, le=MAX_ID, description="only the changes of this server"),
        DIGITS_ONLY,
    ] = None,
) -> Page[ChangeOut]:
    """Your changes, newest first."""
    count, rows = services.changes.list(principal.account_id, page, server_id)
    next_url, previous_url = page_links(request, page, count)
    return Page[ChangeOut](
        count=count, next=next_url, previous=previous_url, results=[change_out(c) for c in rows]
    )


@router.get("/{change_id}/", operation_id="getChange", responses=responses(400, 401, 404))
def get_change(change_id: ChangeId, principal: PrincipalDep, services: ServicesDep) -> ChangeOut:
    """One change: its phase, the command's exit code and last 64 KiB of output, the health
    check's result, the snapshot."""
    return change_out(services.changes.get(principal.account_id, change_id))
