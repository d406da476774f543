"""Publishing operations over RabbitMQ (``VPSD_BROKER_URL``) with Dramatiq: one queue per
host; the consuming side is ``vpsd.agent.broker_runner``.

The ``Operation`` row stays the truth; a message only says "operation N may be ready".
API processes publish the pending operations no one has published yet (``dispatched_at``
empty) to their server's host's queue, after the commit, in a background thread, so a
request never waits for the broker and a broker down costs only time. Each agent also
republishes its own host's operations still pending ``republish_after_seconds`` after they
were published: a lost message only delays.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from urllib.parse import urlsplit, urlunsplit

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from sqlalchemy import or_, select, update

from vpsd.config import Settings
from vpsd.db.base import utcnow
from vpsd.db.models import Host, Operation, Server
from vpsd.db.session import Database
from vpsd.operations import leases

log = logging.getLogger(__name__)

ACTOR = "vpsd.run_operation"
BATCH = 500
"""Most operations published per round; the next round takes the rest."""
MAX_RETRY_DELAY = 30.0


def queue_name(host: str) -> str:
    """The queue of a host's operations."""
    return f"vpsd.host.{host}"


def make_broker(url: str) -> RabbitmqBroker:
    """A Dramatiq broker on RabbitMQ that waits for the broker's confirmation of each
    publish (``dispatched_at`` is recorded only then). No Dramatiq middleware: retries,
    time and age limits are vpsd's own (attempts, leases), kept in the database."""
    return RabbitmqBroker(url=pika_url(url), confirm_delivery=True, middleware=[])


def pika_url(url: str) -> str:
    """``url`` as pika reads it. Celery and kombu write the default virtual host ``/`` as a
    second slash (``amqp://host:5672//``), which pika would read as the vhost ``""``."""
    parts = urlsplit(url)
    if parts.path == "//":
        return urlunsplit(parts._replace(path="/%2F"))
    return url


class OutboxPublisher:
    """Publishes pending operations to their hosts' queues from a background thread.

    ``host=None`` (API processes): every host's operations not yet published, when woken by
    ``notify`` after a commit. ``host=NAME`` (an agent): that host's operations next in line
    that were never published or were published ``republish_after_seconds`` ago, every
    ``interval`` seconds too. A failed publish is retried with a growing delay; the rows wait.
    """

    def __init__(
        self,
        db: Database,
        settings: Settings,
        broker: RabbitmqBroker,
        *,
        host: str | None = None,
        interval: float | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.broker = broker
        self.host = host
        self.interval = interval
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vpsd-publisher", daemon=True)

    def start(self) -> None:
        """Start publishing in the background (at once: earlier rows may be waiting)."""
        self._wake.set()
        self._thread.start()

    def notify(self) -> None:
        """New pending operations were committed: publish them."""
        self._wake.set()

    def stop(self) -> None:
        """Stop the thread (rows not yet published wait for the next publisher)."""
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()

    def publish_due(self) -> int:
        """Publish the operations due now (see the class); how many."""
        due = self._due()
        for operation_id, host in due:
            self.broker.enqueue(
                dramatiq.Message(
                    queue_name=queue_name(host),
                    actor_name=ACTOR,
                    args=(operation_id,),
                    kwargs={},
                    options={},
                )
            )
        if due:
            with self.db.write() as session:
                session.execute(
                    update(Operation)
                    .where(Operation.id.in_([operation_id for operation_id, _ in due]))
                    .values(dispatched_at=utcnow())
                )
        return len(due)

    def _due(self) -> list[tuple[int, str]]:
        query = (
            select(Operation.id, Host.name)
            .join(Server, Server.id == Operation.server_id)
            .join(Host, Host.id == Server.host_id)
            .where(leases.next_in_line())
            .order_by(Operation.id)
            .limit(BATCH)
        )
        if self.host is None:
            query = query.where(Operation.dispatched_at.is_(None))
        else:
            cutoff = utcnow() - timedelta(seconds=self.settings.republish_after_seconds)
            query = query.where(
                Host.name == self.host,
                or_(Operation.dispatched_at.is_(None), Operation.dispatched_at < cutoff),
            )
        with self.db.read() as session:
            return [(row.id, row.name) for row in session.execute(query)]

    def _loop(self) -> None:
        delay = 1.0
        while not self._stopping.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                while self.publish_due() == BATCH:
                    pass
                delay = 1.0
            except Exception as error:  # the broker or the database is away: the rows wait
                log.warning("publishing operations failed (%s); retrying in %g s", error, delay)
                self._stopping.wait(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY)
                self._wake.set()
