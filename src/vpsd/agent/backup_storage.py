"""The agent's look at its host's backup repository (``operations.backup_storage``)."""

from __future__ import annotations

import logging

from vpsd.agent.periodic import Periodic
from vpsd.backups.base import BackupStore, StorageHealth, StorageState
from vpsd.db.session import Database
from vpsd.operations.backup_storage import record

log = logging.getLogger(__name__)


class BackupStorageWatch(Periodic):
    """Looks at ``store`` at start, then every ``interval`` seconds, for host ``host_name``."""

    def __init__(self, db: Database, store: BackupStore, host_name: str, interval: float) -> None:
        super().__init__(
            "vpsd-backup-storage", "looking at the backup storage", self.check, interval,
            at_start=True,
        )  # fmt: skip
        self.db = db
        self.store = store
        self.host_name = host_name

    def check(self) -> StorageHealth:
        """Look now, record and log what was found; what it was."""
        health = self.store.health()
        before = record(self.db, self.host_name, health)
        if before == health.state:
            return health
        if health.state is StorageState.MISSING:
            log.error("the backup storage is missing: %s", health.detail)
        elif health.state is StorageState.UNAVAILABLE:
            log.error("the backup storage cannot be used: %s", health.detail)
        elif before in (StorageState.MISSING, StorageState.UNAVAILABLE):
            log.warning("the backup storage is usable again (%s)", health.state)
        else:
            log.info("the backup storage is %s", health.state)
        return health
