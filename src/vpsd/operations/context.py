"""What operation handlers need: the database, the driver, the settings, the backup store."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from vpsd.backups.base import BackupStore
from vpsd.config import Settings
from vpsd.db.session import Database
from vpsd.hypervisor.base import Driver
from vpsd.operations.preemption import Cancellations


@dataclass(frozen=True, slots=True)
class OperationContext:
    """Shared by the runner, its worker threads, recovery and the VM monitor."""

    db: Database
    driver: Driver
    settings: Settings
    backups: BackupStore
    claimant: str = field(default_factory=lambda: f"{socket.gethostname()}#{os.getpid()}")
    """Whose lease this process's claims carry (``leases.new_claimant``; agents set it)."""
    cancellations: Cancellations = field(default_factory=Cancellations)
    """The operations running here that another request may call off (``preemption``)."""
