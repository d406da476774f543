"""``/api/v1/servers/``: create, list, show, start, stop, reboot, console, delete, and the
server's backup and snapshot policies."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from vpsd.api.deps import DIGITS_ONLY, PageDep, PrincipalDep, ServicesDep
from vpsd.api.pagination import page_links
from vpsd.api.presenters import policy_out, server_out, snapshot_policy_out
from vpsd.api.responses import responses, text_route_responses
from vpsd.api.routing import ApiRoute
from vpsd.schemas import (
    MAX_ID,
    BackupPolicy,
    BackupPolicyOut,
    Page,
    ServerCreate,
    ServerDeleted,
    ServerOut,
    SnapshotPolicy,
    SnapshotPolicyOut,
    SnapshotRef,
)

router = APIRouter(prefix="/servers", tags=["servers"], route_class=ApiRoute)
DEFAULT_CONSOLE_BYTES = 64 * 1024
MAX_CONSOLE_BYTES = 1024 * 1024
NO_SNIFF = {"X-Content-Type-Options": "nosniff"}
ServerId = Annotated[int, Path(ge=1, le=MAX_ID, description="the server's id"), DIGITS_ONLY]


@router.get("/", operation_id="listServers", responses=responses(400, 401))
def list_servers(
    request: Request, principal: PrincipalDep, services: ServicesDep, page: PageDep
) -> Page[ServerOut]:
    """The account's servers, newest first."""
    count, rows = services.servers.list(principal.account_id, page)
    next_url, previous_url = page_links(request, page, count)
    return Page[ServerOut](
        count=count, next=next_url, previous=previous_url, results=[server_out(s) for s in rows]
    )


@router.post(
    "/",
    operation_id="createServer",
    status_code=201,
    responses=responses(400, 401, 404, 413, 415),
)
def create_server(body: ServerCreate, principal: PrincipalDep, services: ServicesDep) -> ServerOut:
    """Create a server: its disk is made (from an image, a snapshot or a backup) and its VM
    boots (status ``starting``→``running``). 404: an SSH key, snapshot or backup that is not
    yours."""
    return server_out(services.servers.create(principal.account_id, body))


@router.get("/{server_id}/", operation_id="getServer", responses=responses(400, 401, 404))
def get_server(server_id: ServerId, principal: PrincipalDep, services: ServicesDep) -> ServerOut:
    """One server."""
    return server_out(services.servers.get(principal.account_id, server_id))


@router.post("/{server_id}/stop/", operation_id="stopServer", responses=responses(400, 401, 404))
def stop_server(server_id: ServerId, principal: PrincipalDep, services: ServicesDep) -> ServerOut:
    """Power the server down: ACPI first, forced after the configured timeout."""
    return server_out(services.servers.stop(principal.account_id, server_id))


@router.post("/{server_id}/start/", operation_id="startServer", responses=responses(400, 401, 404))
def start_server(server_id: ServerId, principal: PrincipalDep, services: ServicesDep) -> ServerOut:
    """Boot a stopped server (or retry one in ``error``)."""
    return server_out(services.servers.start(principal.account_id, server_id))


@router.post(
    "/{server_id}/reboot/", operation_id="rebootServer", responses=responses(400, 401, 404)
)
def reboot_server(server_id: ServerId, principal: PrincipalDep, services: ServicesDep) -> ServerOut:
    """Reboot a running server: a graceful power cycle (ACPI, forced after the timeout)."""
    return server_out(services.servers.reboot(principal.account_id, server_id))


@router.get(
    "/{server_id}/console/",
    operation_id="getServerConsole",
    response_class=PlainTextResponse,
    responses=text_route_responses(400, 401, 404, description="the console's last bytes"),
)
def server_console(
    server_id: ServerId,
    principal: PrincipalDep,
    services: ServicesDep,
    max_bytes: Annotated[
        int,
        Query(alias="bytes", ge=1, le=MAX_CONSOLE_BYTES, description="at most this much"),
        DIGITS_ONLY,
    ] = DEFAULT_CONSOLE_BYTES,
) -> PlainTextResponse:
    """The last bytes of the server's serial console (boot messages, login prompt), so you
    can see why a guest does not boot. As the guest wrote them, escape sequences included:
    vpsctl and the panel show them safely (``vpsd.console_text``)."""
    tail = services.servers.console(principal.account_id, server_id, max_bytes)
    # The guest chose these bytes: a browser must never take them for HTML or a script.
    return PlainTextResponse(tail.decode(errors="replace"), headers=NO_SNIFF)


@router.delete(
    "/{server_id}/",
    operation_id="deleteServer",
    status_code=204,
    response_class=Response,
    responses={
        200: {"model": ServerDeleted, "description": "with force=true: what protection it removed"},
        **responses(400, 401, 404),
    },
)
def delete_server(
    server_id: ServerId,
    principal: PrincipalDep,
    services: ServicesDep,
    force: Annotated[
        bool,
        Query(description="remove the protection of the server's snapshots first, and say so"),
    ] = False,
) -> Response:
    """Delete the server: its VM is killed, its disks and snapshots removed. Refused (400)
    while a snapshot of it is protected, unless ``force=true``: that answers 200 with the
    snapshots whose protection it removed; else 204."""
    deletion = services.servers.delete(principal.account_id, server_id, force)
    if not force:
        return Response(status_code=204)
    removed = [SnapshotRef(id=s.id, name=s.name) for s in deletion.unprotected]
    named = ", ".join(f"{s.name} ({s.id})" for s in removed)
    message = f"Server {deletion.server.name} is being deleted with its snapshots" + (
        f"; the protection of {len(removed)} snapshot(s) was removed first: {named}."
        if removed
        else "; none of them was protected."
    )
    body = ServerDeleted(message=message, unprotected_snapshots=removed)
    return JSONResponse(body.model_dump())


@router.get(
    "/{server_id}/backup-policy/",
    operation_id="getBackupPolicy",
    responses=responses(400, 401, 404),
)
def get_backup_policy(
    server_id: ServerId, principal: PrincipalDep, services: ServicesDep
) -> BackupPolicyOut:
    """When the server's automatic backups are taken and how many are kept."""
    return policy_out(services.backup_policies.get(principal.account_id, server_id))


@router.put(
    "/{server_id}/backup-policy/",
    operation_id="setBackupPolicy",
    responses=responses(400, 401, 404, 413, 415),
)
def set_backup_policy(
    server_id: ServerId, body: BackupPolicy, principal: PrincipalDep, services: ServicesDep
) -> BackupPolicyOut:
    """Replace the server's backup policy: daily, or weekly on ``weekday``, at ``hour`` UTC;
    the oldest automatic backups beyond ``keep`` are deleted."""
    return policy_out(services.backup_policies.set(principal.account_id, server_id, body))


@router.get(
    "/{server_id}/snapshot-policy/",
    operation_id="getSnapshotPolicy",
    responses=responses(400, 401, 404),
)
def get_snapshot_policy(
    server_id: ServerId, principal: PrincipalDep, services: ServicesDep
) -> SnapshotPolicyOut:
    """When the server's automatic snapshots are taken, how many are kept, and the latest
    slot that was skipped (and why)."""
    return snapshot_policy_out(services.snapshot_policies.get(principal.account_id, server_id))


@router.put(
    "/{server_id}/snapshot-policy/",
    operation_id="setSnapshotPolicy",
    responses=responses(400, 401, 404, 413, 415),
)
def set_snapshot_policy(
    server_id: ServerId, body: SnapshotPolicy, principal: PrincipalDep, services: ServicesDep
) -> SnapshotPolicyOut:
    """Replace the server's snapshot policy: hourly at ``minute``, daily at ``hour``:``minute``
    or weekly on ``weekday`` too, UTC. Automatic snapshots count toward the server's 5; the
    oldest automatic ones beyond ``keep`` are deleted, never a manual or protected one."""
    return snapshot_policy_out(
        services.snapshot_policies.set(principal.account_id, server_id, body)
    )
