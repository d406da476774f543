"""The agent's look for the backups a stop or reboot calls off (``operations.preemption``)."""

from __future__ import annotations

import logging

from vpsd.agent.periodic import Periodic
from vpsd.db.session import Database
from vpsd.operations.preemption import INTERVAL, Cancellations, preempted

log = logging.getLogger(__name__)


class PreemptionSweep(Periodic):
    """Every ``INTERVAL`` seconds, cancels this process's preempted backups."""

    def __init__(self, db: Database, cancellations: Cancellations) -> None:
        super().__init__("vpsd-preempt", "looking for preempted backups", self.sweep, INTERVAL)
        self.db = db
        self.cancellations = cancellations

    def sweep(self) -> int:
        """Cancel the preempted backups running here now; how many."""
        running = self.cancellations.running()
        if not running:
            return 0
        cancelled = 0
        for operation_id, reason in preempted(self.db, running).items():
            if self.cancellations.cancel(operation_id, reason):
                log.warning("operation %s: %s", operation_id, reason)
                cancelled += 1
        return cancelled
