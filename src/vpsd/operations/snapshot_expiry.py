"""Deleting expired snapshots: each host's agent looks every
``VPSD_SNAPSHOT_EXPIRY_INTERVAL`` seconds (30 by default, so within a minute of
``expires_at``) for its own servers' snapshots whose time has come, and queues their deletion
as a ``snapshot.delete`` operation (payload ``{"reason": "expired"}``), logged like any other.

A snapshot that is being taken, restored or copied to a new server stays until that has
ended, and is deleted at the first look after; a protected snapshot never expires (the API
refuses to give one an expiry, and this checks again).
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import select

from vpsd.db.models import Server, Snapshot, SnapshotStatus
from vpsd.db.session import Database
from vpsd.operations.outbox import Dispatcher, lock_server_row
from vpsd.operations.payloads import DeleteSnapshot
from vpsd.operations.scope import on_host
from vpsd.operations.snapshot_records import enqueue_deletion, in_use

log = logging.getLogger(__name__)

SETTLED = (SnapshotStatus.COMPLETED, SnapshotStatus.FAILED)
"""Only these expire: an ``in_progress`` snapshot is deleted once it has settled."""
EXPIRED = DeleteSnapshot(reason="expired")


def expire_snapshots(db: Database, dispatcher: Dispatcher, host: str, now: datetime) -> int:
    """Queue the deletion of every snapshot of ``host``'s servers that expired at or before
    ``now``, unless protected or in use; how many were queued."""
    with db.read() as session:
        expired = session.execute(
            select(Snapshot.id, Snapshot.server_id)
            .join(Server, Server.id == Snapshot.server_id)
            .where(
                Snapshot.expires_at <= now,  # ix_snapshots_expires_at
                Snapshot.status.in_(SETTLED),
                Snapshot.protected.is_(False),
                on_host(host),
            )
            .order_by(Snapshot.id)
        ).all()
    queued = sum(_expire(db, snapshot_id, server_id, now) for snapshot_id, server_id in expired)
    if queued:
        dispatcher.notify()
    return queued


def _expire(db: Database, snapshot_id: int, server_id: int, now: datetime) -> bool:
    with db.write() as session:
        lock_server_row(session, server_id)  # as a restore or a copy takes it
        snapshot = session.get(Snapshot, snapshot_id, populate_existing=True)
        # Read again under the lock: a PATCH may have protected it or moved its expiry.
        if (
            snapshot is None
            or snapshot.status not in SETTLED
            or snapshot.protected
            or snapshot.expires_at is None
            or snapshot.expires_at > now
        ):
            return False
        if in_use(session, snapshot_id):
            log.info("snapshot %s expired; kept while it is restored or copied", snapshot_id)
            return False
        operation = enqueue_deletion(session, snapshot, EXPIRED)
        session.flush()
        log.info(
            "server %s: snapshot %s (%s) expired at %s; deletion queued (operation %s)",
            server_id, snapshot_id, snapshot.name, snapshot.expires_at, operation.id,
        )  # fmt: skip
    return True
