"""Backups: copies of servers' disks in a repository apart from the hosts (restic)."""

from __future__ import annotations

from pathlib import Path

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


def same_filesystem_warning(settings: Settings) -> str | None:
    """A warning for the operator when backups would go to the filesystem holding the
    servers' disks (the default): they would not survive the loss of that disk."""
    repository = settings.effective_backup_repository
    if ":" in repository.split("/", 1)[0]:
        return None  # sftp:, s3:... elsewhere by construction
    folder = Path(repository)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        same = folder.stat().st_dev == settings.data_dir.stat().st_dev
    except OSError:
        return None
    if not same:
        return None
    return (
        f"backups go to {repository}, on the same filesystem as the servers' disks: they will "
        "not survive the loss of that disk or host; set VPSD_BACKUP_REPOSITORY to another "
        "disk, an sftp: or an s3: repository"
    )
