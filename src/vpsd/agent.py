"""One hypervisor host's worker: recovery, the operation runner, the VM monitor, the backup
scheduler and the heartbeat, for the servers of this host (``settings.host_name``).

``vpsd serve`` embeds one for the machine it runs on; ``vpsd agent --host NAME`` runs one on
its own, beside a ``vpsd serve`` elsewhere on the same PostgreSQL database (or the same
SQLite file on one machine). Agents find their host's work by polling the database
(``InProcessRunner``); the API wakes only an agent in its own process at once.
"""

from __future__ import annotations

import logging
import signal
import threading

from vpsd import __version__
from vpsd.backups.base import BackupStore
from vpsd.config import Settings
from vpsd.db.session import Database
from vpsd.hypervisor.base import Driver
from vpsd.operations.context import OperationContext
from vpsd.operations.heartbeat import HostHeartbeat
from vpsd.operations.monitor import VmMonitor, reconcile_power_states
from vpsd.operations.recovery import recover
from vpsd.operations.runner import InProcessRunner
from vpsd.operations.scheduler import BackupScheduler
from vpsd.services.backup_policies import BackupPolicyService

log = logging.getLogger(__name__)


class HostAgent:
    """The parts that act on this host's VMs. ``recover`` once (the database migrated, the
    data dir verified), then ``start``; ``stop`` waits for running operations to end."""

    def __init__(
        self, settings: Settings, db: Database, driver: Driver, backups: BackupStore
    ) -> None:
        self.settings = settings
        self.ctx = OperationContext(db=db, driver=driver, settings=settings, backups=backups)
        self.runner = InProcessRunner(self.ctx, threads=settings.runner_threads)
        self.monitor = VmMonitor(self.ctx, settings.monitor_interval)
        self.policies = BackupPolicyService(db, self.runner)
        self.scheduler = BackupScheduler(self.policies, settings.backup_scheduler_interval)
        self.heartbeat = HostHeartbeat(db, settings)

    def recover(self) -> None:
        """Register this host, then settle what a crash or restart left of its servers'
        operations and VMs (blocking: the database and QEMU's monitors)."""
        self.heartbeat.register()
        recover(self.ctx)
        reconcile_power_states(self.ctx)

    def start(self) -> None:
        """Run operations, watch VMs, take due backups and heartbeat, in background threads."""
        self.runner.start()
        self.runner.notify()
        self.monitor.start()
        self.scheduler.start()
        self.heartbeat.start()
        log.info("host %s: agent running", self.settings.host_name)

    def stop(self) -> None:
        """Stop every thread; operations under way run to their end first."""
        self.heartbeat.stop()
        self.scheduler.stop()
        self.monitor.stop()
        self.runner.stop()


def run_agent(settings: Settings) -> None:
    """``vpsd agent``: this host's agent alone, in the foreground, until SIGTERM or SIGINT
    (operations under way end first). The caller holds the data dir's lock."""
    from vpsd.backups import make_backup_store
    from vpsd.hypervisor.registry import make_driver
    from vpsd.services.images import ImageService

    settings.servers_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.effective_database_url)
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    try:
        ImageService(db, settings).sync()  # the images this host's servers boot
        agent = HostAgent(settings, db, make_driver(settings), make_backup_store(settings))
        agent.recover()
        agent.start()
        log.info(
            "vpsd %s agent of host %s ready (data dir %s, driver %s)",
            __version__, settings.host_name, settings.data_dir, settings.driver,
        )  # fmt: skip
        stopping.wait()
        log.info("host %s: stopping; operations under way end first", settings.host_name)
        agent.stop()
    finally:
        db.dispose()
