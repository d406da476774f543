"""This host's registration and heartbeat: every few seconds it records that it is alive and
what it offers guests (``HostCapacity``, measured here), and renews the leases of the
operations its agent runs. API processes anywhere read these rows (placement, the hosts'
states); nothing else tells them about a host."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select, update

from vpsd.agent.periodic import Periodic
from vpsd.config import Settings
from vpsd.db.base import utcnow
from vpsd.db.models import Host, HostState, Server
from vpsd.db.session import Database
from vpsd.operations import leases

log = logging.getLogger(__name__)

GIB = 1024**3
MEMINFO = Path("/proc/meminfo")


class CapacityUnreadable(Exception):
    """This host's capacity could not be read (``/proc`` or the data dir unreadable)."""


@dataclass(frozen=True, slots=True)
class HostCapacity:
    """What this host offers guests, before the overcommit ratios."""

    cpus: int
    memory_mb: int
    """Total memory less ``VPSD_HOST_RESERVED_MEMORY_MB``."""
    disk_free_gb: float
    """Free space of the data dir's filesystem."""


def measure_capacity(settings: Settings) -> HostCapacity:
    """CPUs, memory for guests and free disk of this host, read now; CapacityUnreadable
    when they cannot be read."""
    try:
        total_kb = _mem_total_kb(MEMINFO.read_text())
        stat = os.statvfs(settings.data_dir)
    except (OSError, ValueError) as error:
        raise CapacityUnreadable(f"cannot read this host's capacity: {error}") from error
    return HostCapacity(
        cpus=os.cpu_count() or 1,
        memory_mb=max(0, total_kb // 1024 - settings.host_reserved_memory_mb),
        disk_free_gb=stat.f_bavail * stat.f_frsize / GIB,
    )


def _mem_total_kb(meminfo: str) -> int:
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    raise ValueError("no MemTotal in /proc/meminfo")


def register(db: Database, settings: Settings, capacity: HostCapacity) -> int:
    """Record this host (``settings.host_name``) as alive with ``capacity`` and the
    settings' overcommit ratios; its id. A new host is ``up``; a known one keeps the state an
    admin gave it. Servers with no host (made before hosts existed) become this host's."""
    now = utcnow()
    with db.write() as session:
        host = session.scalar(select(Host).where(Host.name == settings.host_name).with_for_update())
        if host is None:
            host = Host(name=settings.host_name, state=HostState.UP, created_at=now)
            session.add(host)
        _record(host, settings, capacity, now)
        session.flush()
        session.execute(update(Server).where(Server.host_id.is_(None)).values(host_id=host.id))
        return host.id


def heartbeat(db: Database, settings: Settings, host_id: int, capacity: HostCapacity) -> bool:
    """Record that the host is alive, with what it offers now; False when its row is gone."""
    with db.write() as session:
        host = session.get(Host, host_id, with_for_update=True)
        if host is None:
            return False
        _record(host, settings, capacity, utcnow())
        return True


def _record(host: Host, settings: Settings, capacity: HostCapacity, now: datetime) -> None:
    host.vcpus = capacity.cpus
    host.memory_mb = capacity.memory_mb
    host.disk_gb = capacity.disk_free_gb
    host.cpu_overcommit = settings.cpu_overcommit
    host.memory_overcommit = settings.memory_overcommit
    host.disk_overcommit = settings.disk_overcommit
    host.ssh_host = settings.ssh_host
    host.last_heartbeat_at = now


class HostHeartbeat(Periodic):
    """Registers this host (``register``), then heartbeats with its capacity, measured
    anew, every ``host_heartbeat_seconds``, renewing ``claimant``'s leases
    (``vpsd.operations.leases``)."""

    def __init__(self, db: Database, settings: Settings, claimant: str) -> None:
        super().__init__(
            "vpsd-heartbeat", "recording this host's heartbeat", self.beat,
            settings.host_heartbeat_seconds,
        )  # fmt: skip
        self.db = db
        self.settings = settings
        self.claimant = claimant
        self.host_id: int | None = None

    def register(self) -> int:
        """Record this host as alive now (before the API takes requests); its id."""
        self.host_id = register(self.db, self.settings, measure_capacity(self.settings))
        return self.host_id

    def beat(self) -> None:
        """One heartbeat: this host's row and its leases, now."""
        capacity = measure_capacity(self.settings)
        if self.host_id is None or not heartbeat(self.db, self.settings, self.host_id, capacity):
            self.register()
        leases.renew(self.db, self.claimant)
