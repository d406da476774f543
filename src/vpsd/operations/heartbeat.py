"""This host's heartbeat: it records, every few seconds, that it is alive and what it offers,
and renews the leases of the operations its agent runs."""

from __future__ import annotations

from vpsd.config import Settings
from vpsd.db.session import Database
from vpsd.operations import leases
from vpsd.operations.periodic import Periodic
from vpsd.services import hosts, quotas


class HostHeartbeat(Periodic):
    """Registers this host at ``start`` (``hosts.register``), then heartbeats with its
    capacity, measured anew, every ``host_heartbeat_seconds``, renewing ``claimant``'s
    leases (``vpsd.operations.leases``)."""

    def __init__(self, db: Database, settings: Settings, claimant: str) -> None:
        super().__init__(
            "vpsd-heartbeat", "recording this host's heartbeat", self._beat,
            settings.host_heartbeat_seconds,
        )  # fmt: skip
        self.db = db
        self.settings = settings
        self.claimant = claimant
        self.host_id: int | None = None

    def register(self) -> int:
        """Record this host as alive now (before the API takes requests); its id."""
        self.host_id = hosts.register(self.db, self.settings, quotas.measure_host(self.settings))
        return self.host_id

    def _beat(self) -> None:
        if self.host_id is None:
            self.register()
        else:
            hosts.heartbeat(
                self.db, self.settings, self.host_id, quotas.measure_host(self.settings)
            )
        leases.renew(self.db, self.claimant)
