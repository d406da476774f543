"""Takes the automatic backups that policies make due, in a background thread."""

from __future__ import annotations

from vpsd.db.base import utcnow
from vpsd.operations.periodic import Periodic
from vpsd.services.backup_policies import BackupPolicyService


class BackupScheduler(Periodic):
    """Runs ``BackupPolicyService.take_due_backups`` at start (catching up after downtime)
    and every ``interval`` seconds."""

    def __init__(self, policies: BackupPolicyService, interval: float) -> None:
        super().__init__(
            "vpsd-backup-scheduler",
            "taking the due automatic backups",
            lambda: policies.take_due_backups(utcnow()),
            interval,
            at_start=True,
        )
