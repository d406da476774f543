"""Backups: the rules of the Backups API (10 manual per server, completed-only restore,
tenancy; backups outlive their server). The copying is an operation (``handlers``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Row, Select, exists, func, select
from sqlalchemy.orm import Session, joinedload

from vpsd.config import Settings
from vpsd.db.models import (
    Backup,
    BackupStatus,
    BackupStorageCheck,
    BackupType,
    Operation,
    OperationKind,
    Server,
    ServerStatus,
)
from vpsd.db.session import Database
from vpsd.operations.outbox import ACTIVE_OPERATION, Dispatcher, enqueue, enqueue_backup
from vpsd.schemas import BackupCreate
from vpsd.services.common import PageRequest, lock_server, transition
from vpsd.services.errors import InvalidState, LimitReached, NotFound
from vpsd.services.restores import RestoreView, begin_restore, ensure_completed
from vpsd.services.snapshots import ServerName
from vpsd.services.states import ServerAction

VISIBLE = (BackupStatus.IN_PROGRESS, BackupStatus.COMPLETED, BackupStatus.FAILED)
COUNTED = (BackupStatus.IN_PROGRESS, BackupStatus.COMPLETED)
"""Manual backups in these states count toward the per-server limit."""
STORAGE_REASONS: dict[str, str] = {
    "missing": "the backup storage is missing: this backup cannot be restored until it is back",
    "unavailable": (
        "the backup storage cannot be used right now: this backup cannot be restored until it can"
    ),
}
"""A completed backup's ``status_reason`` while its server's host finds its backup storage
in that state (``BackupStorageCheck.state``, as its agent recorded the store's
``StorageState``: services read the record, never the store)."""


@dataclass(frozen=True, slots=True)
class BackupView:
    """A backup as the read endpoints show it."""

    id: int
    server: ServerName
    name: str
    type: BackupType
    status: BackupStatus
    size_mb: int | None
    stored_mb: int | None
    created_at: datetime
    description: str | None
    status_reason: str | None
    consistency: str | None
    completed_at: datetime | None
    progress: int | None


def _view_query() -> Select[Backup, int, str, str | None]:
    return (
        select(Backup, Server.id, Server.name, BackupStorageCheck.state)
        .join(Backup.server)
        .outerjoin(BackupStorageCheck, BackupStorageCheck.host_id == Server.host_id)
    )


def _view(row: Row[Backup, int, str, str | None]) -> BackupView:
    backup, server_id, server_name, storage = row
    return backup_view(backup, ServerName(server_id, server_name), storage)


def backup_view(backup: Backup, server: ServerName, storage: str | None = None) -> BackupView:
    """The plain value of a backup row; ``storage``, the state its server's host last found
    its backup storage in, explains a completed backup that cannot be restored now."""
    reason = backup.status_reason
    if backup.status == BackupStatus.COMPLETED and storage in STORAGE_REASONS:
        reason = STORAGE_REASONS[storage]
    return BackupView(
        backup.id, server, backup.name, backup.type, backup.status, backup.size_mb,
        backup.stored_mb, backup.created_at, backup.description, reason,
        backup.consistency, backup.completed_at, backup.progress,
    )  # fmt: skip


class BackupService:
    """The rules for a customer's backups; every method is one transaction."""

    def __init__(self, db: Database, settings: Settings, dispatcher: Dispatcher) -> None:
        self.db = db
        self.settings = settings
        self.dispatcher = dispatcher

    def list(
        self, account_id: int, page: PageRequest, server_id: int | None = None
    ) -> tuple[int, list[BackupView]]:
        """The account's backups, newest first, optionally of one server (deleted or not)."""
        conditions = [Backup.account_id == account_id, Backup.status.in_(VISIBLE)]
        if server_id is not None:
            conditions.append(Backup.server_id == server_id)
        with self.db.read() as session:
            count = session.scalar(select(func.count()).select_from(Backup).where(*conditions))
            rows = session.execute(
                _view_query()
                .where(*conditions)
                .order_by(Backup.id.desc())
                .offset(page.offset)
                .limit(page.page_size)
            ).all()
            return count or 0, [_view(row) for row in rows]

    def get(self, account_id: int, backup_id: int) -> BackupView:
        """One of the account's backups; NotFound for others' and unknown ids."""
        with self.db.read() as session:
            row = session.execute(
                _view_query().where(
                    Backup.id == backup_id,
                    Backup.account_id == account_id,
                    Backup.status.in_(VISIBLE),
                )
            ).first()
            if row is None:
                raise NotFound("backup not found")
            return _view(row)

    def create(self, account_id: int, request: BackupCreate) -> BackupView:
        """Record an ``in_progress`` manual backup and queue taking it.

        Raises NotFound for an unknown server, InvalidState when it is not running or
        stopped, LimitReached when it has the maximum of manual backups already.
        """
        with self.db.write() as session:
            server = lock_server(session, account_id, request.server_id)
            transition(server, ServerAction.BACKUP)
            taken = session.scalar(
                select(func.count())
                .select_from(Backup)
                .where(
                    Backup.server_id == server.id,
                    Backup.type == BackupType.MANUAL,
                    Backup.status.in_(COUNTED),
                )
            )
            limit = self.settings.max_manual_backups_per_server
            if (taken or 0) >= limit:
                raise LimitReached(
                    f"backup limit reached: a server can have at most {limit} manual backups "
                    "(automatic ones do not count); delete one first"
                )
            backup = enqueue_backup(
                session, server, request.name, request.description, BackupType.MANUAL
            )
            view = backup_view(backup, ServerName(server.id, server.name))
        self.dispatcher.notify()
        return view

    def restore(self, account_id: int, backup_id: int) -> RestoreView:
        """Put the server in ``restoring`` and queue: hard stop, write the backup's bytes over
        its disks, prior power state.

        Raises NotFound, or InvalidState when the backup is not completed, its server was
        deleted, is not running or stopped, or is busy with another operation.
        """
        with self.db.write() as session:
            found = self._find(session, account_id, backup_id)
            if found.server.status == ServerStatus.DELETED:
                raise InvalidState(
                    "the server of this backup was deleted; create a new server from the "
                    "backup instead (POST /api/v1/servers/ with backup_id)"
                )
            server = lock_server(session, account_id, found.server_id)
            backup = self._find(session, account_id, backup_id)  # re-read under the lock
            ensure_completed("backup", backup.status)
            prior = begin_restore(
                session, server, OperationKind.BACKUP_RESTORE, backup_id=backup.id
            )
            view = RestoreView(
                backup.id, backup.name, backup.created_at, server.id, server.name, prior
            )
        self.dispatcher.notify()
        return view

    def delete(self, account_id: int, backup_id: int) -> None:
        """Hide the backup at once and queue forgetting its data in the repository.

        Raises NotFound, or InvalidState while it is being restored or a server is being
        made from it.
        """
        with self.db.write() as session:
            backup = self._find(session, account_id, backup_id)
            if backup.server.status != ServerStatus.DELETED:
                lock_server(session, account_id, backup.server_id)
                backup = self._find(session, account_id, backup_id)
            if backup_in_use(session, backup.id):
                raise InvalidState(
                    "this backup is being restored or a server is being made from it; delete "
                    "it when that has finished"
                )
            backup.status = BackupStatus.DELETING
            enqueue(session, OperationKind.BACKUP_DELETE, backup.server_id, backup_id=backup.id)
        self.dispatcher.notify()

    @staticmethod
    def _find(session: Session, account_id: int, backup_id: int) -> Backup:
        backup = session.scalar(
            select(Backup)
            .options(joinedload(Backup.server))
            .where(
                Backup.id == backup_id,
                Backup.account_id == account_id,
                Backup.status.in_(VISIBLE),
            )
            .with_for_update(of=Backup)
            .execution_options(populate_existing=True)
        )
        if backup is None:
            raise NotFound("backup not found")
        return backup


def backup_in_use(session: Session, backup_id: int) -> bool:
    """Whether a restore from the backup, or a new server from it, is queued or running."""
    return bool(
        session.scalar(
            select(
                exists().where(
                    Operation.backup_id == backup_id,  # ix_operations_backup_id
                    Operation.kind.in_((OperationKind.BACKUP_RESTORE, OperationKind.SERVER_CREATE)),
                    Operation.status.in_(ACTIVE_OPERATION),
                )
            )
        )
    )
