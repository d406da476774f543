"""One hypervisor host's worker: recovery, the operation runner, the VM monitor, the backup
scheduler and the heartbeat, for the servers of this host (``settings.host_name``).

``vpsd serve`` embeds one for the machine it runs on; ``vpsd agent --host NAME`` runs one on
its own, beside a ``vpsd serve`` elsewhere on the same PostgreSQL database (or the same
SQLite file on one machine). With a broker (``VPSD_BROKER_URL``) an agent takes its host's
work from its queue (``BrokerRunner``); without one it polls the database (``InProcessRunner``;
an API in its own process wakes it at once).
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import TYPE_CHECKING

from vpsd import __version__
from vpsd.backups.base import BackupStore
from vpsd.config import Settings
from vpsd.db.session import Database
from vpsd.hypervisor.base import Driver
from vpsd.operations import leases
from vpsd.operations.backup_storage import BackupStorageWatch
from vpsd.operations.context import OperationContext
from vpsd.operations.heartbeat import HostHeartbeat
from vpsd.operations.monitor import VmMonitor, reconcile_power_states
from vpsd.operations.periodic import Periodic
from vpsd.operations.preemption import PreemptionSweep
from vpsd.operations.recovery import recover, take_back_expired
from vpsd.operations.runner import InProcessRunner
from vpsd.operations.scheduler import BackupScheduler
from vpsd.services.backup_policies import BackupPolicyService

if TYPE_CHECKING:
    from vpsd.operations.broker import BrokerRunner

log = logging.getLogger(__name__)


class HostAgent:
    """The parts that act on this host's VMs. ``recover`` once (the database migrated, the
    data dir verified), then ``start``; ``stop`` waits for running operations to end."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        driver: Driver,
        backups: BackupStore,
        *,
        beside_api: bool = True,
    ) -> None:
        """``beside_api``: the API runs in this process and reads the VMs' files itself;
        False, and the agent mirrors what API processes elsewhere need (the consoles)."""
        self.settings = settings
        self.ctx = OperationContext(
            db=db, driver=driver, settings=settings, backups=backups,
            claimant=leases.new_claimant(settings),
        )  # fmt: skip
        self.runner = make_runner(self.ctx)
        self.monitor = VmMonitor(self.ctx, settings.monitor_interval, mirror=not beside_api)
        self.policies = BackupPolicyService(db, self.runner, host=settings.host_name)
        self.scheduler = BackupScheduler(self.policies, settings.backup_scheduler_interval)
        self.heartbeat = HostHeartbeat(db, settings, self.ctx.claimant)
        self.lease_sweeper = Periodic(
            "vpsd-leases", "taking back operations whose lease expired", self._take_back,
            settings.host_heartbeat_seconds,
        )  # fmt: skip
        self.preemption = PreemptionSweep(db, self.ctx.cancellations)
        self.storage_watch = BackupStorageWatch(
            db, backups, settings.host_name, settings.backup_storage_check_seconds
        )

    def recover(self) -> None:
        """Register this host, then settle what a crash or restart left of its servers'
        operations and VMs (blocking: the database and QEMU's monitors)."""
        self.heartbeat.register()
        recover(self.ctx)
        reconcile_power_states(self.ctx)

    def start(self) -> None:
        """Run operations, watch VMs, take due backups, heartbeat, cancel backups a stop
        preempts and look at the backup storage, in background threads."""
        self.runner.start()
        self.runner.notify()
        self.monitor.start()
        self.scheduler.start()
        self.heartbeat.start()
        self.lease_sweeper.start()
        self.preemption.start()
        self.storage_watch.start()
        log.info("host %s: agent running", self.settings.host_name)

    def stop(self) -> None:
        """Stop every thread; operations under way run to their end first."""
        self.storage_watch.stop()
        self.lease_sweeper.stop()
        self.scheduler.stop()
        self.monitor.stop()
        self.runner.stop()
        self.preemption.stop()
        # Last: while operations end, the host is alive and their leases are renewed.
        self.heartbeat.stop()

    def _take_back(self) -> None:
        if take_back_expired(self.ctx):
            self.runner.notify()


def make_runner(ctx: OperationContext) -> InProcessRunner | BrokerRunner:
    """What runs this host's operations: fed by the broker when one is set, else polling."""
    if ctx.settings.broker_url:
        from vpsd.operations.broker import BrokerRunner

        return BrokerRunner(ctx, ctx.settings.broker_url, threads=ctx.settings.runner_threads)
    return InProcessRunner(ctx, threads=ctx.settings.runner_threads)


def run_agent(settings: Settings, metrics: tuple[str, int] | None = None) -> None:
    """``vpsd agent``: this host's agent alone, in the foreground, until SIGTERM or SIGINT
    (operations under way end first), serving Prometheus metrics on ``metrics`` (address,
    port) if given. The caller holds the data dir's lock."""
    from vpsd.backups import make_backup_store
    from vpsd.hypervisor.registry import make_driver
    from vpsd.metrics import serve_metrics
    from vpsd.services.images import ImageService
    from vpsd.serving import StartupError

    settings.servers_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.effective_database_url)
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    try:
        ImageService(db, settings).sync()  # the images this host's servers boot
        agent = HostAgent(
            settings, db, make_driver(settings), make_backup_store(settings), beside_api=False
        )
        agent.recover()
        if metrics is not None:
            try:
                serve_metrics(*metrics, db, settings)
            except OSError as error:
                address, port = metrics
                raise StartupError(
                    f"cannot serve metrics on {address}:{port}: {error.strerror or error}"
                ) from None
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
