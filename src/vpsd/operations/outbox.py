"""The outbox: how work is queued as durable ``Operation`` rows, and the seam to whatever
runs them.

A service adds an operation in the same transaction as the state change it belongs to
(``enqueue``), and after the commit tells the ``Dispatcher``: the embedded agent's runner
wakes, or an API process's publisher sends it to its host's queue on the broker
(``vpsd.operations.publisher``). Helpers here never commit.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from vpsd.db.models import (
    Backup,
    BackupStatus,
    BackupType,
    Operation,
    OperationKind,
    OperationStatus,
    Server,
)
from vpsd.operations.payloads import Payload

ACTIVE_OPERATION = (OperationStatus.PENDING, OperationStatus.RUNNING)
BLOCKING_KINDS = tuple(
    kind
    for kind in OperationKind
    if kind not in (OperationKind.SNAPSHOT_DELETE, OperationKind.BACKUP_DELETE)
)
"""Kinds that make a server "busy": deleting a snapshot or a backup may queue behind anything."""


class Dispatcher(Protocol):
    """The seam between services and whatever executes operations: services call
    ``notify`` after committing new operations."""

    def notify(self) -> None:
        """Tell the executor that new pending operations were committed."""
        ...


def enqueue(
    session: Session,
    kind: OperationKind,
    server_id: int,
    *,
    snapshot_id: int | None = None,
    backup_id: int | None = None,
    payload: Payload | None = None,
) -> Operation:
    """Add a pending operation to the session; it runs after the transaction commits."""
    operation = Operation(
        kind=kind,
        server_id=server_id,
        snapshot_id=snapshot_id,
        backup_id=backup_id,
        status=OperationStatus.PENDING,
        payload=payload.model_dump() if payload is not None else {},
    )
    session.add(operation)
    return operation


def lock_server_row(session: Session, server_id: int) -> Server | None:
    """The server, locked for the rest of the transaction and read afresh (the agents'
    periodic jobs: any account's server), or None if it has no row."""
    server: Server | None = session.scalar(
        select(Server)
        .where(Server.id == server_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return server


def enqueue_backup(
    session: Session,
    server: Server,
    name: str,
    description: str | None,
    backup_type: BackupType,
    slot: datetime | None = None,
) -> Backup:
    """Add an ``in_progress`` backup of ``server`` (locked by the caller) and queue taking
    it. The caller checks the rules and commits."""
    backup = Backup(
        account_id=server.account_id,
        server=server,
        name=name,
        description=description,
        type=backup_type,
        status=BackupStatus.IN_PROGRESS,
        progress=0,
        slot=slot,
        image_id=server.image_id,
        disk_gb=server.disk_gb,
    )
    session.add(backup)
    session.flush()
    enqueue(session, OperationKind.BACKUP_CREATE, server.id, backup_id=backup.id)
    return backup
