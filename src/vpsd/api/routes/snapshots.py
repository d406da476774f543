"""``/api/v1/snapshots/``: the seed page's list, create, restore and delete, plus show and
edit (name, description, protection, expiry)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response

from vpsd.api.deps import DIGITS_ONLY, PageDep, PrincipalDep, ServicesDep, principal_of
from vpsd.api.pagination import page_links
from vpsd.api.presenters import (
    restore_message,
    restore_server_ref,
    snapshot_json,
    snapshot_out,
)
from vpsd.api.responses import FastJSONResponse, responses
from vpsd.api.routing import ApiRoute
from vpsd.schemas import (
    MAX_ID,
    Page,
    RestoreSnapshotRef,
    RestoreStarted,
    SnapshotCreate,
    SnapshotCreated,
    SnapshotOut,
    SnapshotUpdate,
)
from vpsd.services.container import Services

router = APIRouter(prefix="/snapshots", tags=["snapshots"], route_class=ApiRoute)
SnapshotId = Annotated[int, Path(ge=1, le=MAX_ID, description="the snapshot's id"), DIGITS_ONLY]

CREATE_MESSAGE = (
    "Snapshot is being created. qcow2 snapshots are copy-on-write, so this usually takes "
    "well under a second whatever the server's size; poll GET /api/v1/snapshots/{id}/ "
    "until its status is completed."
)


@router.get(
    "/",
    operation_id="listSnapshots",
    response_model=Page[SnapshotOut],
    responses=responses(400, 401),
)
async def list_snapshots(
    request: Request,
    page: PageDep,
    server_id: Annotated[
        int | None,
        Query(ge=1, le=MAX_ID, description="only the snapshots of this server"),
        DIGITS_ONLY,
    ] = None,
) -> FastJSONResponse:
    """All snapshots on your servers, newest first."""
    # Async: short indexed queries, cheaper on the event loop than through a worker thread;
    # the caller (checked by ApiRoute) and the services straight from the request: each
    # dependency costs FastAPI about a tenth of a read's time to solve.
    services: Services = request.app.state.services
    principal = principal_of(request)
    count, rows = await services.snapshots.list(principal.account_id, page, server_id)
    next_url, previous_url = page_links(request, page, count)
    return FastJSONResponse(
        {
            "count": count,
            "next": next_url,
            "previous": previous_url,
            "results": [snapshot_json(s) for s in rows],
        }
    )


@router.post(
    "/",
    operation_id="createSnapshot",
    status_code=201,
    responses=responses(400, 401, 404, 413, 415),
)
def create_snapshot(
    body: SnapshotCreate, principal: PrincipalDep, services: ServicesDep
) -> SnapshotCreated:
    """Take a point-in-time snapshot of all of a server's disks (at most 5 per server)."""
    snapshot = services.snapshots.create(principal.account_id, body)
    shown = snapshot_out(snapshot)
    return SnapshotCreated(
        **shown.model_dump(), message=CREATE_MESSAGE.replace("{id}", str(snapshot.id))
    )


@router.get(
    "/{snapshot_id}/",
    operation_id="getSnapshot",
    response_model=SnapshotOut,
    responses=responses(400, 401, 404),
)
async def get_snapshot(snapshot_id: SnapshotId, request: Request) -> FastJSONResponse:
    """One snapshot: poll it until its status is ``completed`` or ``failed``."""
    services: Services = request.app.state.services  # as in list_snapshots
    snapshot = await services.snapshots.get(principal_of(request).account_id, snapshot_id)
    return FastJSONResponse(snapshot_json(snapshot))


@router.patch(
    "/{snapshot_id}/",
    operation_id="updateSnapshot",
    responses=responses(400, 401, 404, 413, 415),
)
def update_snapshot(
    snapshot_id: SnapshotId, body: SnapshotUpdate, principal: PrincipalDep, services: ServicesDep
) -> SnapshotOut:
    """Change a snapshot's ``name``, ``description``, ``protected`` or ``expires_at``: only
    the fields given (``null`` clears the description or the expiry). A protected snapshot
    refuses deletion, expiry and rotation; it cannot have an ``expires_at``."""
    return snapshot_out(services.snapshots.update(principal.account_id, snapshot_id, body))


@router.post(
    "/{snapshot_id}/restore/", operation_id="restoreSnapshot", responses=responses(400, 401, 404)
)
def restore_snapshot(
    snapshot_id: SnapshotId, principal: PrincipalDep, services: ServicesDep
) -> RestoreStarted:
    """Overwrite the server's disks with the snapshot; the server is stopped first."""
    restore = services.snapshots.restore(principal.account_id, snapshot_id)
    return RestoreStarted(
        message=restore_message(
            restore,
            "snapshot",
            "its disks and memory are put back as they were, and the guest resumes where it was"
            if restore.memory
            else "its disks are reverted to the snapshot",
            "this usually takes a few seconds",
        ),
        snapshot=RestoreSnapshotRef(
            id=restore.source_id, name=restore.source_name, created_at=restore.source_created_at
        ),
        server=restore_server_ref(restore),
    )


@router.delete(
    "/{snapshot_id}/",
    operation_id="deleteSnapshot",
    status_code=204,
    response_class=Response,
    responses=responses(400, 401, 404),
)
def delete_snapshot(
    snapshot_id: SnapshotId, principal: PrincipalDep, services: ServicesDep
) -> None:
    """Permanently delete a snapshot; it is gone from the API at once. A protected one is
    refused (400): remove its protection first."""
    services.snapshots.delete(principal.account_id, snapshot_id)
