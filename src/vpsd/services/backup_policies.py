"""Backup policies: when a server's automatic backups are taken and how many are kept.

Each host's agent runs them (``vpsd.operations.backup_schedule``: the slots, taking the due
backups, pruning); here they are read and set.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from vpsd.db.base import utcnow
from vpsd.db.models import BackupPolicy
from vpsd.db.session import Database
from vpsd.operations.backup_schedule import slots_of
from vpsd.schemas import BackupPolicy as PolicyRequest
from vpsd.services.common import find_server, lock_server

DEFAULT = PolicyRequest(enabled=False)
"""What a server without a policy shows."""


@dataclass(frozen=True, slots=True)
class PolicyView:
    """A policy as the API shows it."""

    enabled: bool
    frequency: str
    hour: int
    weekday: int
    keep: int
    next_backup_at: datetime | None


def _view(policy: BackupPolicy | PolicyRequest, now: datetime) -> PolicyView:
    upcoming = slots_of(policy).following(now) if policy.enabled else None
    return PolicyView(
        policy.enabled, policy.frequency, policy.hour, policy.weekday, policy.keep, upcoming
    )


class BackupPolicyService:
    """Reading and setting servers' backup policies."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, account_id: int, server_id: int) -> PolicyView:
        """The server's policy (disabled defaults when none was set); NotFound as servers."""
        with self.db.read() as session:
            find_server(session, account_id, server_id)
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
