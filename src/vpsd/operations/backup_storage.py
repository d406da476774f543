"""The look at this host's backup repository, every ``backup_storage_check_seconds``.

What it finds (``BackupStore.health``) is recorded for the host (``BackupStorageCheck``), so
that every API process shows it on the backups of the host's servers and ``/metrics`` as
``vpsd_backup_storage_up``; a change is logged, with the storage's own words when it is not
usable. The look never makes a repository (see ``vpsd.backups.base``).
"""

from __future__ import annotations

import logging

from sqlalchemy import select

from vpsd.backups.base import BackupStore, StorageHealth, StorageState
from vpsd.db.base import utcnow
from vpsd.db.models import BackupStorageCheck, Host
from vpsd.db.session import Database
from vpsd.operations.periodic import Periodic

log = logging.getLogger(__name__)


def record(db: Database, host_name: str, health: StorageHealth) -> StorageState | None:
    """Record ``health`` as host ``host_name``'s finding now; the state it replaced (None
    when there was none, or the host is not registered)."""
    now = utcnow()
    with db.write() as session:
        host_id = session.scalar(select(Host.id).where(Host.name == host_name))
        if host_id is None:
            return None
        check = session.get(BackupStorageCheck, host_id, with_for_update=True)
        if check is None:
            session.add(
                BackupStorageCheck(host_id=host_id, state=health.state, checked_at=now, since=now)
            )
            return None
        before = StorageState(check.state)
        if before != health.state:
            check.state, check.since = health.state, now
        check.checked_at = now
        return before


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
