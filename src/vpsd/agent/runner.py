"""The in-process runner: worker threads executing pending operations, FIFO per server.

It is the embedded default behind the ``Dispatcher`` seam: without a broker, each host's
agent finds its work by polling the database (and is woken at once by an API in its own
process). Claims are leases (``vpsd.operations.leases``), so several processes may share
the database; with a broker, ``vpsd.agent.broker_runner`` feeds the agents instead.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import select

from vpsd.agent.recovery import MAX_ATTEMPTS
from vpsd.db.models import Operation, OperationStatus
from vpsd.operations import leases
from vpsd.operations.context import OperationContext
from vpsd.operations.handlers import abandon, execute
from vpsd.operations.leases import LeaseLost
from vpsd.operations.scope import operations_on_host

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
        self._loop_thread: threading.Thread | None = None
        self._busy: set[int] = set()
        self._busy_lock = threading.Lock()

    def start(self) -> None:
        """Start claiming operations in a background thread."""
        self._loop_thread = threading.Thread(target=self._loop, name="vpsd-runner", daemon=True)
        self._loop_thread.start()

    def notify(self) -> None:
        """Wake the runner: new pending operations were committed."""
        self._wake.set()

    def stop(self) -> None:
        """Stop claiming and wait for operations already running to end."""
        self._stopping.set()
        self._wake.set()
        if self._loop_thread is not None:
            self._loop_thread.join()
        self._pool.shutdown(wait=True)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.poll_interval)
            self._wake.clear()
            if self._stopping.is_set():
                break
            try:
                self.claim_ready()
            except Exception:  # the database may be briefly unavailable: try again
                log.exception("claiming operations failed")

    def claim_ready(self) -> int:
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
            if leases.claim(self.ctx.db, row.id, self.ctx.claimant):
                with self._busy_lock:
                    self._busy.add(row.server_id)
                self._pool.submit(self._run, row.id, row.server_id)
                started += 1
        return started

    def _run(self, operation_id: int, server_id: int) -> None:
        try:
            run_claimed(self.ctx, operation_id, self._stopping, self.poll_interval)
        finally:
            with self._busy_lock:
                self._busy.discard(server_id)
            self._wake.set()


def run_claimed(
    ctx: OperationContext, operation_id: int, stopping: threading.Event, retry_delay: float = 1.0
) -> None:
    """Execute an operation this process claimed. When the database refuses its result (disk
    full, connection lost), hand it back to ``pending``, retrying until the database accepts
    (each run counts as an attempt: one that can never be recorded ends ``failed`` after
    ``MAX_ATTEMPTS`` instead of redoing its work forever). On ``stopping`` it stays
    ``running`` and its lease, no longer renewed, brings it back."""
    try:
        execute(ctx, operation_id)
        return
    except LeaseLost as error:
        log.warning("%s; its result was not recorded", error)
        return
    except Exception:
        # Left ``running`` it would block its server until its lease expired; handlers are
        # idempotent, so it is handed back and runs again once writes succeed.
        log.exception("operation %s could not be recorded; it will run again", operation_id)
    delay = retry_delay
    while not stopping.is_set():
        try:
            with ctx.db.read() as session:
                attempts = session.scalar(
                    select(Operation.attempts).where(Operation.id == operation_id)
                )
            if attempts is not None and attempts >= MAX_ATTEMPTS:
                abandon(ctx, operation_id, f"its result could not be recorded {attempts} times")
            else:
                leases.release(ctx.db, operation_id, ctx.claimant)
            return
        except Exception as error:
            log.warning("operation %s: database unavailable (%s); retrying", operation_id, error)
        stopping.wait(delay)
        delay = min(delay * 2, MAX_REQUEUE_DELAY)
