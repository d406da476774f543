"""Restoring a server from a snapshot or a backup: one rule for both."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from vpsd.db.models import OperationKind, PowerStateName, Server, ServerStatus
from vpsd.operations.outbox import enqueue
from vpsd.operations.payloads import Restore
from vpsd.services.common import ensure_idle, transition
from vpsd.services.errors import InvalidState
from vpsd.services.states import ServerAction


@dataclass(frozen=True, slots=True)
class RestoreView:
    """A restore just queued: what it restores from, the server, and the power state the
    server returns to."""

    source_id: int
    source_name: str
    source_created_at: datetime
    server_id: int
    server_name: str
    power_state: PowerStateName
    memory: bool = False
    """Restored from a snapshot with memory: the guest resumes where it was."""


def ensure_completed(what: str, status: str) -> None:
    """Raise InvalidState unless a snapshot's or backup's ``status`` is ``completed``."""
    if status != "completed":
        raise InvalidState(f"only completed {what}s can be restored; this one is {status}")


def begin_restore(
    session: Session,
    server: Server,
    kind: OperationKind,
    *,
    snapshot_id: int | None = None,
    backup_id: int | None = None,
    returns_to: PowerStateName | None = None,
) -> PowerStateName:
    """Put ``server`` (locked by the caller) in ``restoring`` and queue ``kind``: a hard stop,
    its disks overwritten, then the power state it had (or ``returns_to``), which is
    returned.

    Raises InvalidState when the server is not running or stopped, or another operation on
    it is under way."""
    ensure_idle(session, server)
    prior: PowerStateName = returns_to or (
        "running" if server.status == ServerStatus.RUNNING else "stopped"
    )
    transition(server, ServerAction.RESTORE)
    enqueue(
        session,
        kind,
        server.id,
        snapshot_id=snapshot_id,
        backup_id=backup_id,
        payload=Restore(power_state=prior),
    )
    return prior
