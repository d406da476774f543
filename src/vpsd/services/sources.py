"""What a new server is made from when it is not an image: a snapshot or a backup."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from vpsd.db.models import Backup, BackupStatus, Image, Server, SnapshotStatus
from vpsd.operations.payloads import BackupSource, SnapshotSource
from vpsd.schemas import BLANK_IMAGE, ServerCreate
from vpsd.services.backups import VISIBLE as VISIBLE_BACKUPS
from vpsd.services.common import lock_server
from vpsd.services.errors import Invalid, InvalidState, NotFound
from vpsd.services.snapshots import find_snapshot


@dataclass(frozen=True, slots=True)
class Source:
    """A completed snapshot or backup a new server's disk is made from."""

    description: str
    image: Image | None
    """The image the source's server ran: the new server boots it too."""
    disk_gb: int
    authorized_keys: list[str]
    payload: SnapshotSource | BackupSource
    """What the create operation needs to make the disk."""

    def check(self, request: ServerCreate) -> None:
        """Raise Invalid when the request cannot take this source (another image, a smaller
        disk)."""
        slug = self.image.slug if self.image is not None else BLANK_IMAGE
        if request.image is not None and request.image != slug:
            raise Invalid(
                "body.image",
                f"a server made from {self.description} runs its image ({slug}); leave image out",
            )
        if request.disk_gb < self.disk_gb:
            raise Invalid(
                "body.disk_gb",
                f"must be at least {self.disk_gb} GiB, the size of {self.description}'s disk",
            )


def resolve(session: Session, account_id: int, request: ServerCreate) -> Source | None:
    """The request's source, or None when it names neither a snapshot nor a backup.

    Raises NotFound for another account's or an unknown id, InvalidState when the source is
    not completed. Locks what a concurrent delete of the source would lock, so the source
    cannot be deleted between this check and the new server's operation being queued.
    """
    if request.snapshot_id is not None:
        return _snapshot(session, account_id, request.snapshot_id)
    if request.backup_id is not None:
        return _backup(session, account_id, request.backup_id)
    return None


def _keys(server: Server) -> list[str]:
    return [line for line in (server.authorized_keys or "").splitlines() if line]


def _snapshot(session: Session, account_id: int, snapshot_id: int) -> Source:
    server_id = find_snapshot(session, account_id, snapshot_id).server_id
    server = lock_server(session, account_id, server_id)
    snapshot = find_snapshot(session, account_id, snapshot_id)  # again, under the lock
    if snapshot.status != SnapshotStatus.COMPLETED:
        raise InvalidState(f"only completed snapshots can be copied; this one is {snapshot.status}")
    return Source(
        f"snapshot {snapshot.id}",
        server.image,
        server.disk_gb,
        _keys(server),
        SnapshotSource(server_id=server.id, tag=snapshot.tag),
    )


def _backup(session: Session, account_id: int, backup_id: int) -> Source:
    backup = session.scalar(
        select(Backup)
        .where(
            Backup.id == backup_id,
            Backup.account_id == account_id,
            Backup.status.in_(VISIBLE_BACKUPS),
        )
        .with_for_update()
    )
    if backup is None:
        raise NotFound("backup not found")
    if backup.status != BackupStatus.COMPLETED:
        raise InvalidState(f"only completed backups can be restored; this one is {backup.status}")
    image = session.get(Image, backup.image_id) if backup.image_id is not None else None
    return Source(
        f"backup {backup.id}",
        image,
        backup.disk_gb,
        _keys(backup.server),
        BackupSource(backup_id=backup.id),
    )
