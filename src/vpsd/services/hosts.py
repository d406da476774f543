"""Hypervisor hosts: registration and heartbeats, placement of new servers, draining.

A host records itself (``register``) with what it offers guests and its overcommit ratios,
then heartbeats every few seconds (``heartbeat``). A new server goes to an ``up`` host that
heard from lately where it fits: the most free memory, then the fewest servers (``place``).
Tenants never see hosts; admins list them and drain them (``HostService``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from vpsd.config import Settings
from vpsd.db.base import utcnow
from vpsd.db.models import Host, HostState, Server, ServerStatus
from vpsd.db.session import Database
from vpsd.services.errors import LimitReached, NotFound
from vpsd.services.quotas import (
    HOST_FULL,
    USED,
    Resources,
    overcommitted,
)

log = logging.getLogger(__name__)

NO_HOST = "no host is taking new servers right now; try again later"


@dataclass(frozen=True, slots=True)
class HostView:
    """A host as admins see it."""

    id: int
    name: str
    state: HostState
    last_heartbeat_at: datetime
    servers: int
    vcpus: int
    memory_mb: int
    disk_gb: int


def shown_state(host: Host, settings: Settings, now: datetime) -> HostState:
    """``down`` for a host not heard from in ``host_down_after_seconds``, else its state."""
    if host.last_heartbeat_at < now - timedelta(seconds=settings.host_down_after_seconds):
        return HostState.DOWN
    return HostState(host.state)


def is_down(host: Host, settings: Settings) -> bool:
    """Whether ``host`` shows ``down`` now: its servers' operations wait for it."""
    return shown_state(host, settings, utcnow()) == HostState.DOWN


def limits(host: Host) -> Resources:
    """What all servers of ``host`` together may use: its capacity times its ratios."""
    return overcommitted(
        host.vcpus, host.memory_mb, host.disk_gb,
        host.cpu_overcommit, host.memory_overcommit, host.disk_overcommit,
    )  # fmt: skip


def usage_by_host(session: Session) -> dict[int, Resources]:
    """What the servers not deleted use, per host."""
    rows = session.execute(
        select(Server.host_id, *USED)
        .where(Server.status != ServerStatus.DELETED, Server.host_id.is_not(None))
        .group_by(Server.host_id)
    )
    return {
        host_id: Resources(int(count), int(vcpus), int(memory), int(disk))
        for host_id, count, vcpus, memory, disk in rows
        if host_id is not None
    }


def place(session: Session, settings: Settings, wanted: Resources) -> Host:
    """The host a new server of size ``wanted`` goes to: of the ``up`` hosts heard from
    lately where it fits, the one with the most free memory, then the fewest servers.
    LimitReached when none can take it. Call it under the admission lock
    (``vpsd.services.quotas.admit``), so concurrent creates cannot overfill a host."""
    now = utcnow()
    hosts = [
        host
        for host in session.scalars(select(Host).where(Host.state == HostState.UP))
        if shown_state(host, settings, now) == HostState.UP
    ]
    if not hosts:
        log.warning("no host is up to take a new server")
        raise LimitReached(NO_HOST)
    used = usage_by_host(session)
    empty = Resources(0, 0, 0, 0)
    ranked: list[tuple[int, int, int, Host]] = []
    for host in hosts:
        total = used.get(host.id, empty) + wanted
        allowed = limits(host)
        # A VM never gets more vCPUs than its host has CPUs, however overcommitted.
        if wanted.vcpus <= host.vcpus and all(
            getattr(total, name) <= getattr(allowed, name)
            for name in ("vcpus", "memory_mb", "disk_gb")
        ):
            ranked.append((allowed.memory_mb - total.memory_mb, -total.servers, -host.id, host))
    if not ranked:
        log.warning(
            "no host can take a server of %s: %s",
            wanted,
            ", ".join(f"{h.name} uses {used.get(h.id, empty)} of {limits(h)}" for h in hosts),
        )
        raise LimitReached(HOST_FULL)
    return max(ranked, key=lambda entry: entry[:3])[3]


class HostService:
    """What admins do with hosts: list them, drain one."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings

    def list(self) -> list[HostView]:
        """Every host, newest first, with its shown state and its servers not deleted."""
        now = utcnow()
        with self.db.read() as session:
            used = usage_by_host(session)
            return [
                self._view(host, used.get(host.id), now)
                for host in session.scalars(select(Host).order_by(Host.id.desc()))
            ]

    def drain(self, host_id: int) -> HostView:
        """Send no new servers to the host; its servers stay and keep working."""
        return self._set_state(host_id, HostState.DRAINING)

    def undrain(self, host_id: int) -> HostView:
        """Take new servers on the host again (after ``drain``)."""
        return self._set_state(host_id, HostState.UP)

    def _set_state(self, host_id: int, state: HostState) -> HostView:
        with self.db.write() as session:
            host = session.get(Host, host_id, with_for_update=True)
            if host is None:
                raise NotFound("host not found")
            if host.state != state:
                log.info("host %s (%s) is now %s", host.id, host.name, state)
            host.state = state
            session.flush()
            return self._view(host, usage_by_host(session).get(host.id), utcnow())

    def _view(self, host: Host, used: Resources | None, now: datetime) -> HostView:
        return HostView(
            id=host.id,
            name=host.name,
            state=shown_state(host, self.settings, now),
            last_heartbeat_at=host.last_heartbeat_at,
            servers=used.servers if used else 0,
            vcpus=host.vcpus,
            memory_mb=host.memory_mb,
            disk_gb=math.floor(host.disk_gb),
        )
