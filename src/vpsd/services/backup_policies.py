"""Backup policies: when a server's automatic backups are taken and how many are kept.

The schedule is a series of slots (every day, or one weekday, at an hour UTC). At each
look (``take_due_backups``, every minute, with the time passed in so tests set it) a
server whose latest slot has no backup gets one: after downtime the latest missed slot is
caught up on, once; a slot is never taken twice (a unique key on server and slot).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, select
from sqlalchemy.exc import IntegrityError

from vpsd.db.base import utcnow
from vpsd.db.models import (
    Backup,
    BackupPolicy,
    BackupStatus,
    BackupType,
    OperationKind,
    Server,
    ServerStatus,
)
from vpsd.db.session import Database
from vpsd.operations.outbox import Dispatcher, enqueue
from vpsd.operations.scope import on_host
from vpsd.schemas import BackupPolicy as PolicyRequest
from vpsd.services.backups import add_backup
from vpsd.services.common import lock_server
from vpsd.services.errors import NotFound

log = logging.getLogger(__name__)

DEFAULT = PolicyRequest(enabled=False)
"""What a server without a policy shows."""
PERIODS = {"daily": timedelta(days=1), "weekly": timedelta(days=7)}


@dataclass(frozen=True, slots=True)
class PolicyView:
    """A policy as the API shows it."""

    enabled: bool
    frequency: str
    hour: int
    weekday: int
    keep: int
    next_backup_at: datetime | None


def latest_slot(policy: BackupPolicy | PolicyRequest, now: datetime) -> datetime:
    """The policy's most recent slot at or before ``now`` (UTC)."""
    slot = now.replace(hour=policy.hour, minute=0, second=0, microsecond=0)
    if policy.frequency == "weekly":
        slot -= timedelta(days=(slot.weekday() - policy.weekday) % 7)
    if slot > now:
        slot -= PERIODS[policy.frequency]
    return slot


def _view(policy: BackupPolicy | PolicyRequest, now: datetime) -> PolicyView:
    upcoming = latest_slot(policy, now) + PERIODS[policy.frequency] if policy.enabled else None
    return PolicyView(
        policy.enabled, policy.frequency, policy.hour, policy.weekday, policy.keep, upcoming
    )


class BackupPolicyService:
    """Reading and setting policies, and taking the backups they make due."""

    def __init__(self, db: Database, dispatcher: Dispatcher, host: str | None = None) -> None:
        """``host``: take and prune the backups of this host's servers only (each host's
        agent schedules its own, so that two never prune the same server's at once)."""
        self.db = db
        self.dispatcher = dispatcher
        self.host = host

    def _here(self) -> list[ColumnElement[bool]]:
        """Conditions on ``Server``: on this service's host, if it has one."""
        return [] if self.host is None else [on_host(self.host)]

    def get(self, account_id: int, server_id: int) -> PolicyView:
        """The server's policy (disabled defaults when none was set); NotFound as servers."""
        with self.db.read() as session:
            server = session.scalar(
                select(Server).where(
                    Server.id == server_id,
                    Server.account_id == account_id,
                    Server.status != ServerStatus.DELETED,
                )
            )
            if server is None:
                raise NotFound("server not found")
            policy = session.get(BackupPolicy, server_id)
            return _view(policy or DEFAULT, utcnow())

    def set(self, account_id: int, server_id: int, request: PolicyRequest) -> PolicyView:
        """Replace the server's policy. Slots before this moment are not caught up on."""
        with self.db.write() as session:
            lock_server(session, account_id, server_id)
            policy = session.get(BackupPolicy, server_id)
            if policy is None:
                policy = BackupPolicy(server_id=server_id)
                session.add(policy)
            policy.enabled = request.enabled
            policy.frequency = request.frequency
            policy.hour = request.hour
            policy.weekday = request.weekday
            policy.keep = request.keep
            policy.updated_at = utcnow()
            return _view(policy, utcnow())

    def take_due_backups(self, now: datetime) -> int:
        """Queue an automatic backup for every server whose latest slot has none, and prune
        each server's automatic backups to the policy's ``keep``; return how many were queued.

        A server that is not running or stopped at its slot is tried again at the next look
        (within the same slot).
        """
        with self.db.read() as session:
            policies = session.execute(
                select(BackupPolicy, Server.account_id)
                .join(Server, Server.id == BackupPolicy.server_id)
                .where(
                    BackupPolicy.enabled,
                    Server.status.in_((ServerStatus.RUNNING, ServerStatus.STOPPED)),
                    *self._here(),
                )
            ).all()
            due = [
                (policy.server_id, account_id, slot)
                for policy, account_id in policies
                if (slot := latest_slot(policy, now)) >= policy.updated_at
            ]
        queued = sum(self._take(server_id, account_id, slot) for server_id, account_id, slot in due)
        self.prune()
        if queued:
            self.dispatcher.notify()
        return queued

    def _take(self, server_id: int, account_id: int, slot: datetime) -> bool:
        try:
            with self.db.write() as session:
                taken = session.scalar(
                    select(Backup.id).where(Backup.server_id == server_id, Backup.slot == slot)
                )
                if taken is not None:
                    return False
                server = lock_server(session, account_id, server_id)
                if server.status not in (ServerStatus.RUNNING, ServerStatus.STOPPED):
                    return False
                name = f"auto-{slot:%Y%m%d-%H%M}"
                add_backup(session, server, name, None, BackupType.AUTOMATIC, slot=slot)
        except IntegrityError:
            return False  # another look took this slot first
        log.info("server %s: automatic backup for %s queued", server_id, slot)
        return True

    def prune(self) -> int:
        """Delete the automatic backups beyond each policy's ``keep`` newest completed ones
        (older failed ones too); return how many were queued for deletion."""
        pruned = 0
        with self.db.write() as session:
            policies = session.scalars(
                select(BackupPolicy)
                .join(Server, Server.id == BackupPolicy.server_id)
                .where(*self._here())
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
                            session,
                            OperationKind.BACKUP_DELETE,
                            backup.server_id,
                            backup_id=backup.id,
                        )
                        pruned += 1
        if pruned:
            self.dispatcher.notify()
        return pruned
