"""After a crash or restart: settle every unfinished operation, leave no manual step.

Run once at start-up, before the runner, by the host's agent (the one process holding its
data dir); it acts on this host's servers only (``settings.host_name``): other hosts recover
their own. ``take_back_expired`` also runs every few seconds while the agent lives.
"""

from __future__ import annotations

import logging

from sqlalchemy import exists, select

from vpsd.core.errors import HostError
from vpsd.db.base import utcnow
from vpsd.db.models import (
    Backup,
    BackupStatus,
    Operation,
    OperationKind,
    Server,
    ServerStatus,
    Snapshot,
    SnapshotStatus,
)
from vpsd.hypervisor.base import LivenessUnknown, PowerState
from vpsd.operations import leases
from vpsd.operations.context import OperationContext
from vpsd.operations.handlers import abandon
from vpsd.operations.outbox import ACTIVE_OPERATION, enqueue
from vpsd.operations.scope import on_host

log = logging.getLogger(__name__)

BACKUP_TAG_PREFIX = "vpsd-backup-"
"""Tags of backups' temporary snapshots (``Backup.snapshot_tag``)."""
MAX_ATTEMPTS = 3
"""An operation interrupted this many times is failed rather than tried again."""

TRANSITIONAL = (
    ServerStatus.STARTING,
    ServerStatus.STOPPING,
    ServerStatus.REBOOTING,
    ServerStatus.RESTORING,
    ServerStatus.DELETING,
)


def recover(ctx: OperationContext) -> None:
    """Quarantine what no record knows, undo what interrupted driver calls left in live VMs
    (a guest left frozen), requeue interrupted operations, and repair states no operation
    will settle."""
    quarantine_unknown_servers(ctx)
    report_unknown_snapshots(ctx)
    _recover_vms(ctx)
    take_back_expired(ctx)
    _settle_orphans(ctx)
    _settle_backups(ctx)


def quarantine_unknown_servers(ctx: OperationContext) -> list[int]:
    """Stop the VMs and move aside the folders of servers the database does not know (or
    knows as deleted), so that no new server is ever handed them; delete nothing. Returns
    the ids quarantined."""
    with ctx.db.read() as session:
        known = set(session.scalars(select(Server.id).where(Server.status != ServerStatus.DELETED)))
    unknown = sorted(ctx.driver.server_ids_on_disk() - known)
    for server_id in unknown:
        moved = ctx.driver.quarantine(server_id)
        log.error(
            "server %s has files or a VM on this host but no record in the database: its VM "
            "was stopped and its files moved to %s; nothing was deleted",
            server_id,
            moved or "(there were no files)",
        )
    return unknown


def report_unknown_snapshots(ctx: OperationContext) -> None:
    """Log the internal snapshots on known servers' disks that no record knows (left by
    another database). Tags are never reused, so they cannot be mistaken for new ones."""
    with ctx.db.read() as session:
        servers = session.scalars(
            select(Server.id).where(
                Server.status.in_((ServerStatus.RUNNING, ServerStatus.STOPPED)),
                on_host(ctx.settings.host_name),
            )
        ).all()
        rows = session.execute(
            select(Snapshot.server_id, Snapshot.tag).where(Snapshot.server_id.in_(servers))
        ).all()
        backing_up = set(
            session.scalars(
                select(Operation.server_id).where(
                    Operation.kind == OperationKind.BACKUP_CREATE,
                    Operation.status.in_(ACTIVE_OPERATION),
                )
            )
        )
    recorded: dict[int, set[str]] = {}
    for server_id, tag in rows:
        recorded.setdefault(server_id, set()).add(tag)
    for server_id in servers:
        try:
            stray = ctx.driver.snapshot_tags(server_id) - recorded.get(server_id, set())
            temporary = {tag for tag in stray if tag.startswith(BACKUP_TAG_PREFIX)}
            stray -= temporary
            if server_id not in backing_up:
                # A backup's temporary snapshot with no backup operation left to delete it:
                # vpsd's own, made to be deleted (an interrupted one deletes its own).
                for tag in sorted(temporary):
                    log.warning("server %s: deleting leftover backup snapshot %s", server_id, tag)
                    ctx.driver.snapshot_delete(server_id, tag)
        except HostError as error:
            log.warning("server %s: cannot list its snapshots: %s", server_id, error)
            continue
        if stray:
            log.warning(
                "server %s has internal snapshots no record knows (kept, never used): %s",
                server_id,
                ", ".join(sorted(stray)),
            )


def _recover_vms(ctx: OperationContext) -> None:
    with ctx.db.read() as session:
        server_ids = session.scalars(
            select(Server.id).where(
                Server.status != ServerStatus.DELETED, on_host(ctx.settings.host_name)
            )
        ).all()
    for server_id in server_ids:
        try:
            ctx.driver.recover(server_id)
        except Exception:  # one VM's trouble must not keep the others from recovering
            log.exception("recovering the VM of server %s failed", server_id)


def take_back_expired(ctx: OperationContext) -> int:
    """Requeue this host's running operations whose lease expired (``leases``), or fail
    those interrupted ``MAX_ATTEMPTS`` times; how many were requeued. Run at start-up and
    every few seconds, so an agent's work outlives it."""
    requeued = 0
    for operation_id, attempts in leases.expired_leases(ctx.db, ctx.settings, ctx.claimant):
        if attempts >= MAX_ATTEMPTS:
            abandon(ctx, operation_id, f"interrupted {attempts} times by vpsd restarts")
        elif leases.requeue_expired(ctx.db, ctx.settings, ctx.claimant, operation_id):
            log.info("operation %s was interrupted; it will run again", operation_id)
            requeued += 1
    return requeued


def _settle_orphans(ctx: OperationContext) -> None:
    """States that only an operation may leave, but whose operation is gone."""
    active = exists().where(
        Operation.server_id == Server.id, Operation.status.in_(ACTIVE_OPERATION)
    )
    with ctx.db.write() as session:
        here = on_host(ctx.settings.host_name)
        orphans = session.scalars(
            select(Server).where(Server.status.in_(TRANSITIONAL), ~active, here)
        ).all()
        for server in orphans:
            if server.status == ServerStatus.DELETING:
                enqueue(session, OperationKind.SERVER_DELETE, server.id)
                continue
            try:
                power = ctx.driver.info(server.id).power_state
            except LivenessUnknown as error:
                # Neither state may be recorded on a guess; error lets the user start it again.
                log.warning("server %s was left %s; %s", server.id, server.status, error)
                server.status_reason = (
                    f"vpsd restarted while the server was {server.status}, and could not tell "
                    "whether its VM is running; start the server again to find out"
                )
                server.status = ServerStatus.ERROR
                continue
            log.warning("server %s was left %s; it is %s", server.id, server.status, power)
            server.status_reason = f"vpsd restarted while the server was {server.status}"
            server.status = (
                ServerStatus.RUNNING if power is PowerState.RUNNING else ServerStatus.STOPPED
            )
        snapshot_active = exists().where(
            Operation.snapshot_id == Snapshot.id, Operation.status.in_(ACTIVE_OPERATION)
        )
        stuck = session.scalars(
            select(Snapshot)
            .join(Snapshot.server)
            .where(
                Snapshot.status.in_((SnapshotStatus.IN_PROGRESS, SnapshotStatus.DELETING)),
                Server.status != ServerStatus.DELETING,
                ~snapshot_active,
                here,
            )
        ).all()
        for snapshot in stuck:
            if snapshot.status == SnapshotStatus.DELETING:
                enqueue(
                    session,
                    OperationKind.SNAPSHOT_DELETE,
                    snapshot.server_id,
                    snapshot_id=snapshot.id,
                )
            else:
                snapshot.status = SnapshotStatus.FAILED
                snapshot.status_reason = "interrupted: vpsd stopped before it was taken"
                snapshot.completed_at = utcnow()


def _settle_backups(ctx: OperationContext) -> None:
    """Backups whose operation is gone: an unfinished one failed, a hidden one deleted."""
    active = exists().where(
        Operation.backup_id == Backup.id, Operation.status.in_(ACTIVE_OPERATION)
    )
    with ctx.db.write() as session:
        stuck = session.scalars(
            select(Backup).where(
                Backup.status.in_((BackupStatus.IN_PROGRESS, BackupStatus.DELETING)),
                ~active,
                Backup.server_id.in_(select(Server.id).where(on_host(ctx.settings.host_name))),
            )
        ).all()
        for backup in stuck:
            if backup.status == BackupStatus.DELETING:
                enqueue(session, OperationKind.BACKUP_DELETE, backup.server_id, backup_id=backup.id)
            else:
                backup.status = BackupStatus.FAILED
                backup.status_reason = "interrupted: vpsd stopped before it was taken"
                backup.completed_at = utcnow()
