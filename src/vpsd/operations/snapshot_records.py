"""The writes every path that takes or deletes snapshots shares: a user's request (the
services), a snapshot policy's slot, an expiry. Helpers here never commit; the caller holds
the server's lock.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from vpsd.db.models import (
    Operation,
    OperationKind,
    Server,
    Snapshot,
    SnapshotStatus,
    SnapshotType,
)
from vpsd.operations.outbox import ACTIVE_OPERATION, enqueue
from vpsd.operations.payloads import DeleteSnapshot

COUNTED = (SnapshotStatus.IN_PROGRESS, SnapshotStatus.COMPLETED)
"""The snapshots that count toward a server's limit (``max_snapshots_per_server``)."""
READING_KINDS = (
    OperationKind.SNAPSHOT_RESTORE,
    OperationKind.SERVER_CREATE,
    OperationKind.CHANGE_APPLY,
)
"""Operations that need a snapshot: a restore, a new server copied from it, and a change it
guards (which may roll back to it)."""


def counted(session: Session, server_id: int) -> int:
    """How many of the server's snapshots count toward its limit."""
    return (
        session.scalar(
            select(func.count())
            .select_from(Snapshot)
            .where(Snapshot.server_id == server_id, Snapshot.status.in_(COUNTED))
        )
        or 0
    )


def in_use(session: Session, snapshot_id: int) -> bool:
    """Whether a restore from the snapshot, or a new server copied from it, is queued or
    running: the snapshot must stay until it has ended."""
    return bool(
        session.scalar(
            select(
                exists().where(
                    Operation.snapshot_id == snapshot_id,  # ix_operations_snapshot_id
                    Operation.kind.in_(READING_KINDS),
                    Operation.status.in_(ACTIVE_OPERATION),
                )
            )
        )
    )


def enqueue_snapshot(
    session: Session,
    server: Server,
    name: str,
    description: str | None,
    snapshot_type: SnapshotType,
    *,
    expires_at: datetime | None = None,
    slot: datetime | None = None,
    memory: bool = False,
) -> Snapshot:
    """Add an ``in_progress`` snapshot of ``server`` (with its memory if ``memory``) and
    queue taking it."""
    snapshot = Snapshot(
        server=server,
        name=name,
        description=description,
        status=SnapshotStatus.IN_PROGRESS,
        type=snapshot_type,
        expires_at=expires_at,
        slot=slot,
        memory=memory,
    )
    session.add(snapshot)
    session.flush()
    enqueue(session, OperationKind.SNAPSHOT_CREATE, server.id, snapshot_id=snapshot.id)
    return snapshot


def enqueue_deletion(
    session: Session, snapshot: Snapshot, reason: DeleteSnapshot | None = None
) -> Operation:
    """Hide the snapshot at once (``deleting``) and queue removing it from the disks, with
    why (``reason``; default: its user asked)."""
    snapshot.status = SnapshotStatus.DELETING
    return enqueue(
        session,
        OperationKind.SNAPSHOT_DELETE,
        snapshot.server_id,
        snapshot_id=snapshot.id,
        payload=reason or DeleteSnapshot(),
    )
