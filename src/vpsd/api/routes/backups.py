"""``/api/v1/backups/``: list, create, show, restore and delete, in the snapshot page's style."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response

from vpsd.api.deps import DIGITS_ONLY, PageDep, PrincipalDep, ServicesDep
from vpsd.api.pagination import page_links
from vpsd.api.presenters import backup_out, restore_message, restore_server_ref
from vpsd.api.responses import responses
from vpsd.api.routing import ApiRoute
from vpsd.schemas import (
    MAX_ID,
    BackupCreate,
    BackupCreated,
    BackupOut,
    BackupRestoreStarted,
    Page,
    RestoreBackupRef,
)

router = APIRouter(prefix="/backups", tags=["backups"], route_class=ApiRoute)
BackupId = Annotated[int, Path(ge=1, le=MAX_ID, description="the backup's id"), DIGITS_ONLY]

CREATE_MESSAGE = (
    "Backup is being created. The server keeps running: a temporary snapshot fixes the point "
    "in time, and its disks are copied to the backup storage, deduplicated (only what changed "
    "since earlier backups is stored). Poll GET /api/v1/backups/{id}/ until its status is "
    "completed."
)


@router.get("/", operation_id="listBackups", responses=responses(400, 401))
def list_backups(
    request: Request,
    principal: PrincipalDep,
    services: ServicesDep,
    page: PageDep,
    server_id: Annotated[
        int | None,
        Query(ge=1, le=MAX_ID, description="only the backups of this server (deleted or not)"),
        DIGITS_ONLY,
    ] = None,
) -> Page[BackupOut]:
    """All your backups, newest first, including those of deleted servers."""
    count, rows = services.backups.list(principal.account_id, page, server_id)
    next_url, previous_url = page_links(request, page, count)
    return Page[BackupOut](
        count=count, next=next_url, previous=previous_url, results=[backup_out(b) for b in rows]
    )


@router.post(
    "/", operation_id="createBackup", status_code=201, responses=responses(400, 401, 404, 413, 415)
)
def create_backup(
    body: BackupCreate, principal: PrincipalDep, services: ServicesDep
) -> BackupCreated:
    """Back up all of a server's disks to the backup storage (at most 10 manual backups per
    server; automatic ones do not count)."""
    backup = services.backups.create(principal.account_id, body)
    return BackupCreated(
        **backup_out(backup).model_dump(), message=CREATE_MESSAGE.replace("{id}", str(backup.id))
    )


@router.get("/{backup_id}/", operation_id="getBackup", responses=responses(400, 401, 404))
def get_backup(backup_id: BackupId, principal: PrincipalDep, services: ServicesDep) -> BackupOut:
    """One backup: poll it until its status is ``completed`` or ``failed``."""
    return backup_out(services.backups.get(principal.account_id, backup_id))


@router.post(
    "/{backup_id}/restore/", operation_id="restoreBackup", responses=responses(400, 401, 404)
)
def restore_backup(
    backup_id: BackupId, principal: PrincipalDep, services: ServicesDep
) -> BackupRestoreStarted:
    """Overwrite the server's disks with the backup; the server is stopped first."""
    restore = services.backups.restore(principal.account_id, backup_id)
    return BackupRestoreStarted(
        message=restore_message(
            restore,
            "backup",
            "its disks are overwritten with the backup's data from the backup storage",
            "this takes about as long as reading the disk",
        ),
        backup=RestoreBackupRef(
            id=restore.source_id, name=restore.source_name, created_at=restore.source_created_at
        ),
        server=restore_server_ref(restore),
    )


@router.delete(
    "/{backup_id}/",
    operation_id="deleteBackup",
    status_code=204,
    response_class=Response,
    responses=responses(400, 401, 404),
)
def delete_backup(backup_id: BackupId, principal: PrincipalDep, services: ServicesDep) -> None:
    """Permanently delete a backup: gone from the API at once, its data forgotten in the
    backup storage in the background."""
    services.backups.delete(principal.account_id, backup_id)
