"""Running the snapshot policies: taking the automatic snapshots they make due, and rotating.

The slots are the backup policies' (``vpsd.operations.slots``), with ``hourly`` and a minute:
at each look (``take_due_snapshots``, every ``VPSD_SNAPSHOT_SCHEDULER_INTERVAL`` seconds, with
the time passed in so tests set it) a server whose latest slot has no snapshot gets one;
after downtime the latest missed slot is caught up on, once; a slot is never taken twice (a
unique key on server and slot).

Automatic snapshots count toward the server's limit (``max_snapshots_per_server``, the seed
page's 5). When a slot finds the server full, its oldest automatic snapshot goes first; when
none can go (every snapshot is manual, protected, being taken, or being restored or copied),
the slot is skipped: the policy records the slot and why (``last_skipped`` in the API), and
later looks try again until a slot is taken. A manual snapshot is never deleted here.
Rotation then keeps the ``keep`` newest completed automatic snapshots that are not protected.
Each host's agent looks at its own servers only.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from vpsd.db.models import (
    Server,
    ServerStatus,
    Snapshot,
    SnapshotPolicy,
    SnapshotStatus,
    SnapshotType,
)
from vpsd.db.session import Database
from vpsd.operations.outbox import Dispatcher, lock_server_row
from vpsd.operations.payloads import DeleteSnapshot
from vpsd.operations.scope import on_host
from vpsd.operations.slots import TAKEN_FROM, Slots, due_slots
from vpsd.operations.snapshot_records import COUNTED, enqueue_deletion, enqueue_snapshot, in_use

log = logging.getLogger(__name__)

ROTATED = DeleteSnapshot(reason="rotated")


def slots_of(policy: SnapshotPolicy) -> Slots:
    """The snapshot policy's schedule."""
    return Slots(policy.frequency, hour=policy.hour, weekday=policy.weekday, minute=policy.minute)


def take_due_snapshots(
    db: Database, dispatcher: Dispatcher, host: str, now: datetime, limit: int
) -> int:
    """Queue an automatic snapshot for every server of ``host`` whose latest slot has none
    (making room by rotating, or recording why the slot is skipped), then rotate its
    servers' automatic snapshots to their policies' ``keep``; how many were queued.
    ``limit`` is the most snapshots a server may have."""
    with db.read() as session:
        due = due_slots(session, SnapshotPolicy, host, now, slots_of)
    queued = sum(_take(db, server_id, slot, now, limit) for server_id, slot in due)
    rotated = rotate(db, host)
    if queued or rotated:
        dispatcher.notify()
    return queued


def _take(db: Database, server_id: int, slot: datetime, now: datetime, limit: int) -> bool:
    try:
        with db.write() as session:
            taken = session.scalar(
                select(Snapshot.id).where(Snapshot.server_id == server_id, Snapshot.slot == slot)
            )
            if taken is not None:
                return False
            server = lock_server_row(session, server_id)
            policy = session.get(SnapshotPolicy, server_id, populate_existing=True)
            if server is None or policy is None or server.status not in TAKEN_FROM:
                return False
            if not policy.enabled or slots_of(policy).due(policy.updated_at, now) != slot:
                return False  # the policy changed since the look read it
            if not _make_room(session, server_id, limit):
                _skip(session, policy, slot, limit)
                return False
            name = f"auto-{slot:%Y%m%d-%H%M}"
            enqueue_snapshot(session, server, name, None, SnapshotType.AUTOMATIC, slot=slot)
            policy.skipped_slot = policy.skipped_reason = None
    except IntegrityError:
        return False  # another look took this slot first
    log.info("server %s: automatic snapshot for %s queued", server_id, slot)
    return True


def _counted(session: Session, server_id: int) -> list[Snapshot]:
    """The server's snapshots that count toward its limit, oldest first."""
    return list(
        session.scalars(
            select(Snapshot)
            .where(Snapshot.server_id == server_id, Snapshot.status.in_(COUNTED))
            .order_by(Snapshot.id)
        )
    )


def _rotatable(session: Session, snapshot: Snapshot) -> bool:
    """Whether rotation may delete the snapshot: an automatic one, completed, not protected,
    not being restored or copied."""
    return (
        snapshot.type == SnapshotType.AUTOMATIC
        and snapshot.status == SnapshotStatus.COMPLETED
        and not snapshot.protected
        and not in_use(session, snapshot.id)
    )


def _make_room(session: Session, server_id: int, limit: int) -> bool:
    """Whether the server has room for one more snapshot, once its oldest automatic one is
    rotated out if it is full."""
    snapshots = _counted(session, server_id)
    if len(snapshots) < limit:
        return True
    oldest = next((s for s in snapshots if _rotatable(session, s)), None)
    if oldest is None:
        return False
    enqueue_deletion(session, oldest, ROTATED)
    log.info("server %s: snapshot %s rotated out to make room", server_id, oldest.id)
    return True


def _skip(session: Session, policy: SnapshotPolicy, slot: datetime, limit: int) -> None:
    snapshots = _counted(session, policy.server_id)
    manual = sum(1 for s in snapshots if s.type == SnapshotType.MANUAL)
    protected = sum(1 for s in snapshots if s.type == SnapshotType.AUTOMATIC and s.protected)
    busy = len(snapshots) - manual - protected
    held = [
        f"{count} {what}"
        for count, what in (
            (manual, "manual"),
            (protected, "protected automatic"),
            (busy, "automatic being taken, restored or copied"),
        )
        if count
    ]
    reason = (
        f"not taken: the server already has its {limit} snapshots ({', '.join(held)}); an "
        "automatic snapshot only replaces an older automatic one that is not protected, "
        "never a manual one. Delete a snapshot to make room: this slot is tried again "
        "until the next one"
    )
    if policy.skipped_slot != slot or policy.skipped_reason != reason:
        policy.skipped_slot, policy.skipped_reason = slot, reason
        log.info("server %s: automatic snapshot for %s skipped: %s", policy.server_id, slot, reason)


def rotate(db: Database, host: str) -> int:
    """Delete the automatic snapshots of ``host``'s servers beyond each policy's ``keep``
    newest completed ones that are not protected, and failed ones a newer automatic
    snapshot has completed since; how many were queued for deletion."""
    with db.read() as session:
        policies = session.scalars(
            select(SnapshotPolicy)
            .join(Server, Server.id == SnapshotPolicy.server_id)
            .where(on_host(host), Server.status != ServerStatus.DELETED)
        ).all()
        # Only servers with something to rotate take a write transaction and their lock.
        due = [p.server_id for p in policies if _beyond_keep(session, p.server_id, p.keep)]
    return sum(_rotate_server(db, server_id) for server_id in due)


def _beyond_keep(session: Session, server_id: int, keep: int) -> list[Snapshot]:
    """The server's automatic snapshots that rotation deletes: those beyond the ``keep``
    newest completed ones that are not protected, and failed ones older than the newest
    completed one."""
    automatic = session.scalars(
        select(Snapshot)
        .where(
            Snapshot.server_id == server_id,
            Snapshot.type == SnapshotType.AUTOMATIC,
            Snapshot.protected.is_(False),
            Snapshot.status.in_((SnapshotStatus.COMPLETED, SnapshotStatus.FAILED)),
        )
        .order_by(Snapshot.id.desc())
    ).all()
    completed = [s for s in automatic if s.status == SnapshotStatus.COMPLETED]
    newest_completed = completed[0].id if completed else 0
    superseded = [
        s for s in automatic if s.status == SnapshotStatus.FAILED and s.id < newest_completed
    ]
    return completed[keep:] + superseded


def _rotate_server(db: Database, server_id: int) -> int:
    with db.write() as session:
        lock_server_row(session, server_id)  # as a restore or a copy takes it
        policy = session.get(SnapshotPolicy, server_id, populate_existing=True)
        if policy is None:
            return 0
        rotated = 0
        for snapshot in _beyond_keep(session, server_id, policy.keep):
            if not in_use(session, snapshot.id):  # else at a later look
                enqueue_deletion(session, snapshot, ROTATED)
                rotated += 1
    if rotated:
        log.info("server %s: %s automatic snapshots rotated out", server_id, rotated)
    return rotated
