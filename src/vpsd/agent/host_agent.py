"""One hypervisor host's worker, for the servers of this host (``settings.host_name``).

``vpsd serve`` embeds one for the machine it runs on; ``vpsd agent --host NAME`` runs one on
its own, beside a ``vpsd serve`` elsewhere on the same PostgreSQL database (or the same
SQLite file on one machine). Either way it behaves the same: it records what API processes
read (heartbeat and capacity, servers' states and consoles, operations' results). With a
broker (``VPSD_BROKER_URL``) it takes its host's work from its queue (``BrokerRunner``);
without one it polls the database (``InProcessRunner``; an API in its own process wakes it at
once).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from vpsd.agent.automatic_backups import AutomaticBackups
from vpsd.agent.backup_storage import BackupStorageWatch
from vpsd.agent.heartbeat import HostHeartbeat
from vpsd.agent.images import install_images
from vpsd.agent.monitor import VmMonitor, reconcile_power_states
from vpsd.agent.periodic import Periodic
from vpsd.agent.preemption import PreemptionSweep
from vpsd.agent.recovery import recover, take_back_expired
from vpsd.agent.runner import InProcessRunner
from vpsd.backups.base import BackupStore
from vpsd.config import Settings
from vpsd.db.base import utcnow
from vpsd.db.session import Database
from vpsd.hypervisor.base import Driver
from vpsd.operations import leases
from vpsd.operations.context import OperationContext
from vpsd.operations.snapshot_expiry import expire_snapshots
from vpsd.operations.snapshot_schedule import take_due_snapshots

if TYPE_CHECKING:
    from vpsd.agent.broker_runner import BrokerRunner

log = logging.getLogger(__name__)


class HostAgent:
    """The parts that act on this host's VMs. ``recover`` once (the database migrated, the
    data dir verified), then ``start``; ``stop`` waits for running operations to end."""

    def __init__(
        self, settings: Settings, db: Database, driver: Driver, backups: BackupStore
    ) -> None:
        self.settings = settings
        self.ctx = OperationContext(
            db=db, driver=driver, settings=settings, backups=backups,
            claimant=leases.new_claimant(settings),
        )  # fmt: skip
        self.runner = make_runner(self.ctx)
        self.monitor = VmMonitor(self.ctx, settings.monitor_interval)
        self.automatic_backups = AutomaticBackups(
            db, self.runner, settings.host_name, settings.backup_scheduler_interval
        )
        host, runner, limit = settings.host_name, self.runner, settings.max_snapshots_per_server
        self.automatic_snapshots = Periodic(
            "vpsd-automatic-snapshots", "taking the due automatic snapshots",
            lambda: take_due_snapshots(db, runner, host, utcnow(), limit),
            settings.snapshot_scheduler_interval, at_start=True,
        )  # fmt: skip
        self.snapshot_expiry = Periodic(
            "vpsd-snapshot-expiry", "deleting expired snapshots",
            lambda: expire_snapshots(db, runner, host, utcnow()),
            settings.snapshot_expiry_interval, at_start=True,
        )  # fmt: skip
        self.heartbeat = HostHeartbeat(db, settings, self.ctx.claimant)
        self.preemption = PreemptionSweep(db, self.ctx.cancellations)
        self.storage_watch = BackupStorageWatch(
            db, backups, settings.host_name, settings.backup_storage_check_seconds
        )
        self.lease_sweeper = Periodic(
            "vpsd-leases", "taking back operations whose lease expired", self._take_back,
            settings.host_heartbeat_seconds,
        )  # fmt: skip

    def recover(self) -> None:
        """Register this host and its images, then settle what a crash or restart left of
        its servers' operations and VMs (blocking: the database and QEMU's monitors)."""
        self.heartbeat.register()
        install_images(self.ctx.db, self.settings)
        recover(self.ctx)
        reconcile_power_states(self.ctx)

    def start(self) -> None:
        """Run operations, watch VMs, take due backups and snapshots, delete expired
        snapshots, heartbeat, cancel backups a stop preempts and look at the backup storage,
        in background threads."""
        self.runner.start()
        self.runner.notify()
        self.monitor.start()
        self.automatic_backups.start()
        self.automatic_snapshots.start()
        self.snapshot_expiry.start()
        self.heartbeat.start()
        self.lease_sweeper.start()
        self.preemption.start()
        self.storage_watch.start()
        log.info("host %s: agent running", self.settings.host_name)

    def stop(self) -> None:
        """Stop every thread; operations under way run to their end first."""
        self.storage_watch.stop()
        self.lease_sweeper.stop()
        self.snapshot_expiry.stop()
        self.automatic_snapshots.stop()
        self.automatic_backups.stop()
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
        from vpsd.agent.broker_runner import BrokerRunner

        return BrokerRunner(ctx, ctx.settings.broker_url, threads=ctx.settings.runner_threads)
    return InProcessRunner(ctx, threads=ctx.settings.runner_threads)
