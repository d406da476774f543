"""The panel's snapshot and backup actions, on a server's page: take one, restore it or
delete it (each asked first), protect or unprotect a snapshot, and the backup and snapshot
policies.

Snapshots and backups are acted on alike, so one set of handlers serves both, told apart by
``kind`` (``snapshots`` or ``backups``, as in the API's paths), each kind with its own
routes (``_add_routes``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from vpsd.db.base import utcnow
from vpsd.schemas import (
    MAX_ID,
    BackupCreate,
    BackupPolicy,
    SnapshotCreate,
    SnapshotPolicy,
    SnapshotUpdate,
)
from vpsd.services.container import Services
from vpsd.services.errors import DomainError, Invalid
from vpsd.web.render import STATUS_OF_ERROR, FormErrors, PanelRoute, confirm, done
from vpsd.web.servers import ServerId, form_dict, render_server_page
from vpsd.web.session import PanelUser, PanelUserDep, services_of

router = APIRouter(include_in_schema=False, route_class=PanelRoute)
Kind = Literal["snapshots", "backups"]
Action = Literal["restore", "delete"]
PointId = Annotated[int, Path(ge=1, le=MAX_ID)]


@dataclass(frozen=True, slots=True)
class RecoveryPoint:
    """What a restore or delete page needs of a snapshot or a backup."""

    id: int
    name: str
    server_id: int
    server_name: str


@dataclass(frozen=True, slots=True)
class RecoveryPointKind:
    """How the panel words and does things to one kind of recovery point."""

    noun: str
    find: Callable[[Services, int, int], Awaitable[RecoveryPoint]]
    restore: Callable[[Services, int, int], object]
    delete: Callable[[Services, int, int], object]
    restore_consequences: tuple[str, ...]
    delete_consequences: tuple[str, ...]


async def _find_snapshot(services: Services, account_id: int, snapshot_id: int) -> RecoveryPoint:
    found = await services.snapshots.get(account_id, snapshot_id)
    return RecoveryPoint(found.id, found.name, found.server_id, found.server_name)


async def _find_backup(services: Services, account_id: int, backup_id: int) -> RecoveryPoint:
    found = await run_in_threadpool(services.backups.get, account_id, backup_id)
    return RecoveryPoint(found.id, found.name, found.server.id, found.server.name)


KINDS: dict[str, RecoveryPointKind] = {
    "snapshots": RecoveryPointKind(
        noun="snapshot",
        find=_find_snapshot,
        restore=lambda s, account, i: s.snapshots.restore(account, i),
        delete=lambda s, account, i: s.snapshots.delete(account, i),
        restore_consequences=(
            "The server is stopped at once, without shutting down its system.",
            "Its disks are put back exactly as they were when the snapshot was taken: "
            "everything written since is lost.",
            "It is started again if it was running. This takes a few seconds.",
        ),
        delete_consequences=(
            "The snapshot is gone at once and cannot be restored any more.",
            "The server itself is not touched.",
        ),
    ),
    "backups": RecoveryPointKind(
        noun="backup",
        find=_find_backup,
        restore=lambda s, account, i: s.backups.restore(account, i),
        delete=lambda s, account, i: s.backups.delete(account, i),
        restore_consequences=(
            "The server is stopped at once, without shutting down its system.",
            "Its disks are overwritten with the backup's copy, read back from the backup "
            "storage: everything written since is lost. This takes about as long as the "
            "backup did.",
            "It is started again if it was running.",
        ),
        delete_consequences=(
            "The backup is removed from the backup storage and cannot be restored any more.",
            "The server itself is not touched.",
        ),
    ),
}


EXPIRY_CHOICES_HOURS = (1, 24, 7 * 24, 30 * 24)
"""The take-snapshot form's choices of when the snapshot expires."""
POLICIES: dict[str, tuple[str, type[BackupPolicy] | type[SnapshotPolicy], tuple[str, ...]]] = {
    "backup-policy": ("Automatic backups", BackupPolicy, ("hour", "weekday", "keep")),
    "snapshot-policy": (
        "Automatic snapshots",
        SnapshotPolicy,
        ("minute", "hour", "weekday", "keep"),
    ),
}
"""Per policy form: what it is called, its request model, its number fields."""


async def set_policy(request: Request, user: PanelUser, server_id: int, form: str) -> Response:
    """Replace the server's backup or snapshot policy (``form``) with the form's."""
    what, model, numbers = POLICIES[form]
    values = form_dict(await request.form(), numbers=numbers)
    values["enabled"] = values.get("enabled") == "on"
    policies: Any = (
        services_of(request).backup_policies
        if form == "backup-policy"
        else services_of(request).snapshot_policies
    )
    try:
        await run_in_threadpool(
            policies.set, user.account_id, server_id, model.model_validate(values)
        )
    except (ValidationError, DomainError) as error:
        return await render_server_page(
            request, user, server_id, STATUS_OF_ERROR, {form: FormErrors.of(error)}
        )
    state = "on" if values["enabled"] else "off"
    return done(request, f"/servers/{server_id}", f"{what} are {state}.")


@router.post("/servers/{server_id}/backup-policy")
async def set_backup_policy(request: Request, user: PanelUserDep, server_id: ServerId) -> Response:
    """Replace the server's backup policy with the form's."""
    return await set_policy(request, user, server_id, "backup-policy")


@router.post("/servers/{server_id}/snapshot-policy")
async def set_snapshot_policy(
    request: Request, user: PanelUserDep, server_id: ServerId
) -> Response:
    """Replace the server's snapshot policy with the form's."""
    return await set_policy(request, user, server_id, "snapshot-policy")


@router.post("/snapshots/{point_id}/protection")
async def set_protection(request: Request, user: PanelUserDep, point_id: PointId) -> Response:
    """Protect the snapshot (form ``protected=true``) or remove its protection."""
    found = await _find_point(request, user, "snapshots", point_id)
    wanted = (await request.form()).get("protected")
    try:
        if wanted not in ("true", "false"):
            raise Invalid("protected", "choose Protect or Unprotect")
        update = SnapshotUpdate(protected=wanted == "true")
        await run_in_threadpool(
            services_of(request).snapshots.update, user.account_id, point_id, update
        )
    except DomainError as error:
        return await render_server_page(
            request, user, found.server_id, STATUS_OF_ERROR, {"snapshot": FormErrors.of(error)}
        )
    message = (
        f"Snapshot {found.name} is protected: it is never deleted, expired or rotated."
        if wanted == "true"
        else f"Snapshot {found.name} is no longer protected."
    )
    return done(request, f"/servers/{found.server_id}", message)


def _expiry(values: dict[str, Any]) -> None:
    """The take-snapshot form's ``expires_in`` (hours, one of the choices) as ``expires_at``."""
    hours = values.pop("expires_in", None)
    if hours is None:
        return
    if hours not in EXPIRY_CHOICES_HOURS:
        raise Invalid("expires_in", "choose when the snapshot expires from the list")
    values["expires_at"] = utcnow() + timedelta(hours=hours)


async def take(request: Request, user: PanelUser, server_id: int, kind: Kind) -> Response:
    """Take a snapshot or a backup of the server, named in the form."""
    services = services_of(request)
    values = form_dict(await request.form(), numbers=("expires_in",))
    values["server_id"] = server_id
    noun = KINDS[kind].noun
    shown = dict(values)
    try:
        if kind == "snapshots":
            values["memory"] = values.get("memory") == "on"
            _expiry(values)
            created: Any = await run_in_threadpool(
                services.snapshots.create, user.account_id, SnapshotCreate.model_validate(values)
            )
        else:
            created = await run_in_threadpool(
                services.backups.create, user.account_id, BackupCreate.model_validate(values)
            )
    except (ValidationError, DomainError) as error:
        return await render_server_page(
            request,
            user,
            server_id,
            STATUS_OF_ERROR,
            {noun: FormErrors.of(error)},
            {noun: shown},
        )
    return done(request, f"/servers/{server_id}", f"Taking {noun} {created.name}.")


async def _find_point(request: Request, user: PanelUser, kind: str, point_id: int) -> RecoveryPoint:
    return await KINDS[kind].find(services_of(request), user.account_id, point_id)


async def confirm_action(
    request: Request, user: PanelUser, kind: Kind, point_id: int, action: Action
) -> Response:
    """Ask before restoring or deleting a snapshot or a backup."""
    found = await _find_point(request, user, kind, point_id)
    what = KINDS[kind]
    if action == "restore":
        title = f"Restore {found.server_name} from {what.noun} {found.name}?"
        consequences = what.restore_consequences
    else:
        title = f"Delete {what.noun} {found.name} of {found.server_name}?"
        consequences = what.delete_consequences
    return confirm(
        request,
        user,
        title=title,
        consequences=list(consequences),
        action=f"/{kind}/{point_id}/{action}",
        button=f"{action.capitalize()} {what.noun}" if action == "delete" else "Restore server",
        back=f"/servers/{found.server_id}",
    )


async def act(
    request: Request, user: PanelUser, kind: Kind, point_id: int, action: Action
) -> Response:
    """Restore or delete a snapshot or a backup; refused, the server's page says why."""
    found = await _find_point(request, user, kind, point_id)
    what = KINDS[kind]
    services = services_of(request)
    try:
        work = what.restore if action == "restore" else what.delete
        await run_in_threadpool(work, services, user.account_id, point_id)
    except DomainError as error:
        return await render_server_page(
            request, user, found.server_id, STATUS_OF_ERROR, {what.noun: FormErrors.of(error)}
        )
    message = (
        f"Restoring {found.server_name} from {what.noun} {found.name}."
        if action == "restore"
        else f"Deleting {what.noun} {found.name}."
    )
    return done(request, f"/servers/{found.server_id}", message)


def _add_routes(kind: Kind) -> None:
    """The routes of one kind, on literal paths: a path parameter in their place would
    match, and answer, any path of the same shape."""

    @router.post(f"/servers/{{server_id}}/{kind}")
    async def take_one(request: Request, user: PanelUserDep, server_id: ServerId) -> Response:
        """Take a snapshot or a backup of the server."""
        return await take(request, user, server_id, kind)

    @router.get(f"/{kind}/{{point_id}}/{{action}}")
    async def confirm_one(
        request: Request, user: PanelUserDep, point_id: PointId, action: Action
    ) -> Response:
        """Ask before restoring or deleting one."""
        return await confirm_action(request, user, kind, point_id, action)

    @router.post(f"/{kind}/{{point_id}}/{{action}}")
    async def act_on_one(
        request: Request, user: PanelUserDep, point_id: PointId, action: Action
    ) -> Response:
        """Restore or delete one."""
        return await act(request, user, kind, point_id, action)


_add_routes("snapshots")
_add_routes("backups")
