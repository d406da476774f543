"""Backups that a later stop or reboot of their server calls off.

Operations on one server run one at a time, oldest first (``leases.next_in_line``), so a
stop queued behind a running backup would wait for it: for hours behind a large disk, or
for as long as a sick repository keeps restic retrying. Instead a stop or reboot preempts
it: every ``INTERVAL`` seconds the agent looks for its running backups with a stop or
reboot of their server queued after them, and cancels each (``Cancellations.cancel``;
``vpsd.agent.preemption`` looks): the
backup's streaming processes (restic, nbdcopy, qemu-nbd) are killed, the backup fails with
"cancelled: the server was stopped" (what it had stored is forgotten, its temporary snapshot
deleted), and the stop runs next. A delete does not preempt a backup: backups outlive their
server, and one taken just before a delete is wanted.

Each process knows only the backups it runs itself (``Cancellations``); the stop may have
been queued by an API process anywhere, since the look is in the database.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import and_, select
from sqlalchemy.orm import aliased

from vpsd.core import cancellation
from vpsd.core.errors import HostError
from vpsd.db.models import Operation, OperationKind, OperationStatus
from vpsd.db.session import Database

INTERVAL = 1.0
"""Seconds between two looks for preempted backups (a query only while backups run here)."""
PREEMPTING: dict[OperationKind, str] = {
    OperationKind.SERVER_STOP: "cancelled: the server was stopped",
    OperationKind.SERVER_REBOOT: "cancelled: the server was rebooted",
}
"""What preempts a running backup, and the reason the backup then fails with."""


class Cancellations:
    """The cancellable operations this process runs, each with its ``CancelScope``."""

    def __init__(self) -> None:
        self._scopes: dict[int, cancellation.CancelScope] = {}
        self._lock = threading.Lock()

    @contextmanager
    def scope(self, operation_id: int) -> Iterator[cancellation.CancelScope]:
        """Run the body as operation ``operation_id``'s cancellable work: once cancelled,
        its programs are killed and a ``DriverError`` leaving the body becomes
        ``Cancelled`` with the reason."""
        scope = cancellation.CancelScope()
        with self._lock:
            self._scopes[operation_id] = scope
        try:
            with cancellation.cancellable(scope):
                yield scope
        except HostError as error:
            if scope.reason is not None and not isinstance(error, cancellation.Cancelled):
                raise cancellation.Cancelled(scope.reason) from error
            raise
        finally:
            with self._lock:
                self._scopes.pop(operation_id, None)

    def running(self) -> list[int]:
        """The ids of the cancellable operations running now."""
        with self._lock:
            return sorted(self._scopes)

    def cancel(self, operation_id: int, reason: str) -> bool:
        """Call operation ``operation_id`` off; False when it is not running here."""
        with self._lock:
            scope = self._scopes.get(operation_id)
        if scope is None:
            return False
        scope.cancel(reason)
        return True


def preempted(db: Database, operation_ids: list[int]) -> dict[int, str]:
    """Of these operations, the running backups with a stop or reboot of their server
    queued after them: id -> the reason they fail with."""
    later = aliased(Operation)
    with db.read() as session:
        rows = session.execute(
            select(Operation.id, later.kind)
            .join(
                later,
                and_(
                    later.server_id == Operation.server_id,
                    later.id > Operation.id,
                    later.status == OperationStatus.PENDING,
                    later.kind.in_(PREEMPTING),
                ),
            )
            .where(
                Operation.id.in_(operation_ids),
                Operation.kind == OperationKind.BACKUP_CREATE,
                Operation.status == OperationStatus.RUNNING,
            )
            .order_by(later.id)
        ).all()
    found: dict[int, str] = {}
    for operation_id, kind in rows:
        found.setdefault(operation_id, PREEMPTING[OperationKind(kind)])
    return found
