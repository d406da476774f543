"""Running the backup policies: taking the automatic backups they make due, and pruning.

The schedule is a series of slots (every day, or one weekday, at an hour UTC:
``vpsd.operations.slots``, shared with the snapshot policies). At each look
(``take_due_backups``, every minute, with the time passed in so tests set it) a server whose
latest slot has no backup gets one: after downtime the latest missed slot is caught up on,
once; a slot is never taken twice (a unique key on server and slot). Each host's agent looks
at its own servers only, so two agents never prune the same server's backups at once.
Reading and setting policies is ``vpsd.services.backup_policies``'.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from vpsd.db.models import (
    Backup,
    BackupPolicy,
    BackupStatus,
    BackupType,
    OperationKind,
    Server,
)
from vpsd.db.session import Database
from vpsd.operations.outbox import Dispatcher, enqueue, enqueue_backup, lock_server_row
from vpsd.operations.scope import on_host
from vpsd.operations.slots import TAKEN_FROM, Slots, due_slots

log = logging.getLogger(__name__)


class BackupSchedule(Protocol):
    """When a backup policy's slots are (a stored policy, or a request to store one)."""

    @property
    def frequency(self) -> str:
        """``daily`` or ``weekly``."""

    @property
    def hour(self) -> int:
        """The slot's hour, UTC."""

    @property
    def weekday(self) -> int:
        """The weekly slot's day (0: Monday)."""


def slots_of(policy: BackupSchedule) -> Slots:
    """The backup policy's schedule: daily, or weekly, at the top of ``hour``."""
    return Slots(policy.frequency, hour=policy.hour, weekday=policy.weekday)


def take_due_backups(db: Database, dispatcher: Dispatcher, host: str, now: datetime) -> int:
    """Queue an automatic backup for every server of ``host`` whose latest slot has none,
    and prune its servers' automatic backups to their policies' ``keep``; how many were
    queued."""
    with db.read() as session:
        due = due_slots(session, BackupPolicy, host, now, slots_of)
    queued = sum(_take(db, server_id, slot) for server_id, slot in due)
    prune(db, dispatcher, host)
    if queued:
        dispatcher.notify()
    return queued


def _take(db: Database, server_id: int, slot: datetime) -> bool:
    try:
        with db.write() as session:
            taken = session.scalar(
                select(Backup.id).where(Backup.server_id == server_id, Backup.slot == slot)
            )
            if taken is not None:
                return False
            server = lock_server_row(session, server_id)
            if server is None or server.status not in TAKEN_FROM:
                return False
            name = f"auto-{slot:%Y%m%d-%H%M}"
            enqueue_backup(session, server, name, None, BackupType.AUTOMATIC, slot=slot)
    except IntegrityError:
        return False  # another look took this slot first
    log.info("server %s: automatic backup for %s queued", server_id, slot)
    return True


def prune(db: Database, dispatcher: Dispatcher, host: str) -> int:
    """Delete the automatic backups of ``host``'s servers beyond each policy's ``keep``
    newest completed ones (older failed ones too); how many were queued for deletion."""
    pruned = 0
    with db.write() as session:
        policies = session.scalars(
            select(BackupPolicy)
            .join(Server, Server.id == BackupPolicy.server_id)
            .where(on_host(host))
        ).all()
        for policy in policies:
            backups = session.scalars(
                select(Backup)
                .where(
                    Backup.server_id == policy.server_id,
                    Backup.type == BackupType.AUTOMATIC,
                    Backup.status.in_((BackupStatus.COMPLETED, BackupStatus.FAILED)),
                )
                .order_by(Backup.id.desc())
            ).all()
            completed = [b for b in backups if b.status == BackupStatus.COMPLETED]
            if len(completed) <= policy.keep:
                continue
            oldest_kept = completed[policy.keep - 1].id
            for backup in backups:
                if backup.id < oldest_kept:
                    backup.status = BackupStatus.DELETING
                    enqueue(
                        session, OperationKind.BACKUP_DELETE, backup.server_id, backup_id=backup.id
                    )
                    pruned += 1
    if pruned:
        dispatcher.notify()
    return pruned
