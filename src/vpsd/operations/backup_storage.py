"""What the look at a host's backup repository found, recorded (every
``backup_storage_check_seconds``, by ``vpsd.agent.backup_storage``).

What it finds (``BackupStore.health``) is recorded for the host (``BackupStorageCheck``), so
that every API process shows it on the backups of the host's servers and ``/metrics`` as
``vpsd_backup_storage_up``; a change is logged, with the storage's own words when it is not
usable. The look never makes a repository (see ``vpsd.backups.base``).
"""

from __future__ import annotations

from sqlalchemy import select

from vpsd.backups.base import StorageHealth, StorageState
from vpsd.db.base import utcnow
from vpsd.db.models import BackupStorageCheck, Host
from vpsd.db.session import Database


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
