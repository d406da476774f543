"""Backups: copies of servers' disks in a repository apart from the hosts (restic)."""

from __future__ import annotations

from vpsd.backups.base import BackupStore
from vpsd.config import Settings


def make_backup_store(settings: Settings) -> BackupStore:
    """The restic repository ``settings`` name (created on first use, not here)."""
    from vpsd.backups.restic import ResticStore

    return ResticStore(
        settings.effective_backup_repository,
        settings.effective_backup_password_file,
        settings.data_dir / "restic-cache",
        sftp_command=settings.backup_sftp_command,
    )
