"""After a crash or restart: settle every unfinished operation, leave no manual step.

Run once at start-up, before the runner, by the only process executing operations.
"""

from __future__ import annotations

import logging

from sqlalchemy import exists, select, update

from vpsd.db.base import utcnow
from vpsd.db.models import (
    Operation,
    OperationKind,
    OperationStatus,
    Server,
    ServerStatus,
    Snapshot,
    SnapshotStatus,
)
from vpsd.hypervisor.base import PowerState
from vpsd.operations.context import OperationContext
from vpsd.operations.handlers import abandon
from vpsd.services.common import ACTIVE_OPERATION, enqueue

log = logging.getLogger(__name__)

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
    """Undo what interrupted driver calls left in live VMs (a guest left frozen), requeue
    interrupted operations, and repair states no operation will settle."""
    _recover_vms(ctx)
    _requeue_interrupted(ctx)
    _settle_orphans(ctx)


def _recover_vms(ctx: OperationContext) -> None:
    with ctx.db.read() as session:
        server_ids = session.scalars(
            select(Server.id).where(Server.status != ServerStatus.DELETED)
        ).all()
    for server_id in server_ids:
        try:
            ctx.driver.recover(server_id)
        except Exception:  # one VM's trouble must not keep the others from recovering
            log.exception("recovering the VM of server %s failed", server_id)


def _requeue_interrupted(ctx: OperationContext) -> None:
    with ctx.db.read() as session:
        interrupted = session.execute(
            select(Operation.id, Operation.attempts).where(
                Operation.status == OperationStatus.RUNNING
            )
        ).all()
    for operation_id, attempts in interrupted:
        if attempts >= MAX_ATTEMPTS:
            abandon(ctx, operation_id, f"interrupted {attempts} times by vpsd restarts")
            continue
        log.info("operation %s was interrupted; it will run again", operation_id)
        with ctx.db.write() as session:
            session.execute(
                update(Operation)
                .where(Operation.id == operation_id)
                .values(status=OperationStatus.PENDING)
            )


def _settle_orphans(ctx: OperationContext) -> None:
    """States that only an operation may leave, but whose operation is gone."""
    active = exists().where(
        Operation.server_id == Server.id, Operation.status.in_(ACTIVE_OPERATION)
    )
    with ctx.db.write() as session:
        orphans = session.scalars(
            select(Server).where(Server.status.in_(TRANSITIONAL), ~active)
        ).all()
        for server in orphans:
            if server.status == ServerStatus.DELETING:
                enqueue(session, OperationKind.SERVER_DELETE, server.id)
                continue
            power = ctx.driver.info(server.id).power_state
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
