"""The in-process runner: worker threads executing pending operations, FIFO per server.

It is the embedded default behind the ``Dispatcher`` seam. Claiming an operation is an
atomic conditional UPDATE, so the same scheduling works when several processes (later: one
agent per hypervisor host, fed by a broker) share the database.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import select, update

from vpsd.db.base import utcnow
from vpsd.db.models import Operation, OperationStatus
from vpsd.operations.context import OperationContext
from vpsd.operations.handlers import abandon, execute
from vpsd.operations.recovery import MAX_ATTEMPTS
from vpsd.services.hosts import operations_on_host

log = logging.getLogger(__name__)

MAX_REQUEUE_DELAY = 30.0
"""Longest wait, in seconds, between tries to hand back an operation whose result was lost."""


class InProcessRunner:
    """Executes the operations of this host's servers in a thread pool; one at a time per
    server, oldest first."""

    def __init__(self, ctx: OperationContext, threads: int = 8, poll_interval: float = 1.0):
        self.ctx = ctx
        self.poll_interval = poll_interval
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="vpsd-op")
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._scheduler: threading.Thread | None = None
        self._busy: set[int] = set()
        self._busy_lock = threading.Lock()

    def start(self) -> None:
        """Start scheduling in a background thread."""
        self._scheduler = threading.Thread(target=self._loop, name="vpsd-scheduler", daemon=True)
        self._scheduler.start()

    def notify(self) -> None:
        """Wake the scheduler: new pending operations were committed."""
        self._wake.set()

    def stop(self) -> None:
        """Stop scheduling and wait for operations already running to end."""
        self._stopping.set()
        self._wake.set()
        if self._scheduler is not None:
            self._scheduler.join()
        self._pool.shutdown(wait=True)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.poll_interval)
            self._wake.clear()
            if self._stopping.is_set():
                break
            try:
                self.schedule()
            except Exception:  # the database may be briefly unavailable: try again
                log.exception("scheduling operations failed")

    def schedule(self) -> int:
        """Claim and start the oldest pending operation of each idle server of this host
        (``settings.host_name``); return how many."""
        with self.ctx.db.read() as session:
            rows = session.execute(
                select(Operation.id, Operation.server_id, Operation.status)
                .where(
                    Operation.status.in_((OperationStatus.PENDING, OperationStatus.RUNNING)),
                    operations_on_host(self.ctx.settings.host_name),
                )
                .order_by(Operation.id)
            ).all()
        with self._busy_lock:
            taken = set(self._busy)
        # A server with an operation running anywhere, or an older one pending, waits.
        taken.update(row.server_id for row in rows if row.status == OperationStatus.RUNNING)
        started = 0
        for row in rows:
            if row.server_id in taken:
                continue
            taken.add(row.server_id)
            if self._claim(row.id):
                with self._busy_lock:
                    self._busy.add(row.server_id)
                self._pool.submit(self._run, row.id, row.server_id)
                started += 1
        return started

    def _claim(self, operation_id: int) -> bool:
        with self.ctx.db.write() as session:
            claimed = session.execute(
                update(Operation)
                .where(Operation.id == operation_id, Operation.status == OperationStatus.PENDING)
                .values(
                    status=OperationStatus.RUNNING,
                    started_at=utcnow(),
                    attempts=Operation.attempts + 1,
                )
            )
            return bool(claimed.rowcount)  # type: ignore[attr-defined]

    def _run(self, operation_id: int, server_id: int) -> None:
        try:
            execute(self.ctx, operation_id)
        except Exception:
            # The database refused the result (disk full, connection lost). Left ``running``
            # the operation would block its server until the next restart; handlers are
            # idempotent, so it is handed back and runs again once writes succeed.
            log.exception("operation %s could not be recorded; it will run again", operation_id)
            self._requeue(operation_id)
        finally:
            with self._busy_lock:
                self._busy.discard(server_id)
            self._wake.set()

    def _requeue(self, operation_id: int) -> None:
        """Put a claimed operation back to ``pending``, retrying until the database accepts.

        Each run counts as an attempt, so an operation that can never be recorded ends
        ``failed`` after ``MAX_ATTEMPTS`` instead of redoing its work forever. On shutdown
        it stays ``running`` and start-up recovery requeues it.
        """
        delay = self.poll_interval
        while not self._stopping.is_set():
            try:
                with self.ctx.db.read() as session:
                    attempts = session.scalar(
                        select(Operation.attempts).where(Operation.id == operation_id)
                    )
                if attempts is not None and attempts >= MAX_ATTEMPTS:
                    abandon(
                        self.ctx, operation_id, f"its result could not be recorded {attempts} times"
                    )
                    return
                with self.ctx.db.write() as session:
                    session.execute(
                        update(Operation)
                        .where(
                            Operation.id == operation_id,
                            Operation.status == OperationStatus.RUNNING,
                        )
                        .values(status=OperationStatus.PENDING)
                    )
                return
            except Exception as error:
                log.warning(
                    "operation %s: database unavailable (%s); retrying", operation_id, error
                )
            self._stopping.wait(delay)
            delay = min(delay * 2, MAX_REQUEUE_DELAY)
