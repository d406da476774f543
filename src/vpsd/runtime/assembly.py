"""Building a role's parts: the database, the services with the dispatcher they notify, and
this host's agent with its driver and backup store. ``api/``, ``web/`` and ``services/``
never import a driver, a store, the agent or the broker: they are handed what is built here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from vpsd.agent.host_agent import HostAgent
from vpsd.backups import make_backup_store, same_filesystem_warning
from vpsd.backups.base import BackupStore
from vpsd.config import Settings
from vpsd.db import migrate
from vpsd.db.session import Database
from vpsd.hypervisor.base import Driver
from vpsd.hypervisor.registry import make_driver
from vpsd.operations.outbox import Dispatcher
from vpsd.operations.publisher import OutboxPublisher, make_broker
from vpsd.services import installation
from vpsd.services.container import Services, build_services

log = logging.getLogger(__name__)


class PollingAgents:
    """The dispatcher of an API process with no agent in it and no broker: the hosts'
    agents find new operations by polling the database."""

    def notify(self) -> None:
        """Nothing to do: the agents find new operations within their poll interval."""


@dataclass
class Runtime:
    """What one process runs: ``services`` when it serves the API, ``agent`` when it is a
    host's worker, ``publisher`` when it publishes operations to a broker. ``prepare``
    once (blocking: the database, QEMU's monitors), then ``start``; ``stop`` at the end."""

    settings: Settings
    db: Database
    services: Services | None
    agent: HostAgent | None
    publisher: OutboxPublisher | None
    migrate: bool = True
    started: bool = False

    def prepare(self) -> None:
        """Migrate the database (unless a parent process did) and check it belongs with the
        data dir, then let the agent register its host and recover."""
        if self.migrate:
            prepare_database(self.db, self.settings)
        if self.agent is not None:
            self.agent.recover()
            if warning := same_filesystem_warning(self.settings):
                log.warning("%s", warning)

    def start(self) -> None:
        """Start the background threads: the agent's, or the publisher's."""
        if self.agent is not None:
            self.agent.start()
        if self.publisher is not None:
            self.publisher.start()
        self.started = True

    def stop(self) -> None:
        """Stop what ``start`` started (operations under way end first); close the database."""
        if self.started:
            if self.agent is not None:
                self.agent.stop()
            if self.publisher is not None:
                self.publisher.stop()
            self.started = False
        self.db.dispose()


def prepare_database(db: Database, settings: Settings) -> None:
    """Migrate the database (once, under an advisory lock on PostgreSQL) and check that it
    and the data dir belong together; before anything acts on the data dir."""
    migrate.upgrade(db)
    installation.verify(db, settings)


def embedded(
    settings: Settings,
    driver: Driver | None = None,
    backup_store: BackupStore | None = None,
    *,
    migrate_database: bool = True,
) -> Runtime:
    """The API and this host's agent in one process (``vpsd serve`` without a broker): the
    services wake the agent's runner after each commit."""
    db = _database(settings)
    agent = host_agent(settings, db, driver, backup_store)
    services = build_services(db, settings, agent.runner)
    return Runtime(settings, db, services, agent, None, migrate_database)


def api_only(settings: Settings, *, migrate_database: bool = True) -> Runtime:
    """The API with no agent: new operations are published to their hosts' queues when a
    broker is set, else found by the agents' polls."""
    db = _database(settings)
    publisher = (
        OutboxPublisher(db, settings, make_broker(settings.broker_url))
        if settings.broker_url
        else None
    )
    dispatcher: Dispatcher = publisher if publisher is not None else PollingAgents()
    services = build_services(db, settings, dispatcher)
    return Runtime(settings, db, services, None, publisher, migrate_database)


def agent_only(settings: Settings, *, migrate_database: bool = True) -> Runtime:
    """This host's agent alone (``vpsd agent``, the parent of ``vpsd serve --workers N``)."""
    db = _database(settings)
    return Runtime(settings, db, None, host_agent(settings, db), None, migrate_database)


def host_agent(
    settings: Settings,
    db: Database,
    driver: Driver | None = None,
    backup_store: BackupStore | None = None,
) -> HostAgent:
    """This host's agent on the settings' driver and backup store (or those given)."""
    return HostAgent(
        settings,
        db,
        driver or make_driver(settings),
        backup_store or make_backup_store(settings),
    )


def _database(settings: Settings) -> Database:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.servers_dir.mkdir(parents=True, exist_ok=True)
    return Database(settings.effective_database_url)
