"""Running a host's operations from its queue on the broker (``VPSD_BROKER_URL``).

An agent's Dramatiq worker threads consume its host's queue. A message's operation is
claimed under the agent's lease (``leases.claim``), so duplicates, redeliveries and stale
messages do nothing; after it, the thread runs the server's next pending operations in
order. A message is acknowledged after its work is recorded: one whose agent died is
delivered again when it returns. Publishing is ``vpsd.operations.publisher``'s.
"""

from __future__ import annotations

import threading

import dramatiq
from sqlalchemy import select, update

from vpsd.agent.runner import run_claimed
from vpsd.db.models import Operation, OperationStatus
from vpsd.operations import leases
from vpsd.operations.context import OperationContext
from vpsd.operations.publisher import ACTOR, OutboxPublisher, make_broker, queue_name
from vpsd.operations.scope import operations_on_host


class BrokerRunner:
    """This host's operations, from its queue: Dramatiq worker threads, each claiming the
    operation a message names and running it, then its server's next pending ones."""

    def __init__(self, ctx: OperationContext, url: str, threads: int = 8) -> None:
        self.ctx = ctx
        self.broker = make_broker(url)
        host = ctx.settings.host_name
        self.publisher = OutboxPublisher(
            ctx.db,
            ctx.settings,
            self.broker,
            host=host,
            interval=ctx.settings.host_heartbeat_seconds,
        )
        self._stopping = threading.Event()
        dramatiq.actor(actor_name=ACTOR, queue_name=queue_name(host), broker=self.broker)(
            self._run_message
        )
        self.worker = dramatiq.Worker(
            self.broker, queues={queue_name(host)}, worker_threads=threads
        )

    def start(self) -> None:
        """Consume this host's queue and publish its pending operations again, at once (a
        server's next ones were left to the thread that ran its last before a stop)."""
        with self.ctx.db.write() as session:
            session.execute(
                update(Operation)
                .where(
                    Operation.status == OperationStatus.PENDING,
                    operations_on_host(self.ctx.settings.host_name),
                )
                .values(dispatched_at=None)
            )
        self.worker.start()
        self.publisher.start()

    def notify(self) -> None:
        """This host's pending operations changed: publish those due."""
        self.publisher.notify()

    def stop(self) -> None:
        """Stop consuming; operations under way end first. Messages taken but not started
        go back to the queue."""
        self._stopping.set()
        self.publisher.stop()
        self.worker.stop()
        self.broker.close()

    def _run_message(self, operation_id: int) -> None:
        with self.ctx.db.read() as session:
            server_id = session.scalar(
                select(Operation.server_id).where(Operation.id == operation_id)
            )
        next_id: int | None = operation_id
        while (
            server_id is not None
            and next_id is not None
            and not self._stopping.is_set()
            and leases.claim(self.ctx.db, next_id, self.ctx.claimant)
        ):
            run_claimed(self.ctx, next_id, self._stopping)
            next_id = leases.next_pending(self.ctx.db, server_id)
