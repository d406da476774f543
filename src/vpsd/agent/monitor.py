"""Keeps each server's status true to its VM: a VM that died outside vpsd is ``stopped``, one
QEMU paused (its disk's filesystem full) is ``paused``, and is continued once there is room."""

from __future__ import annotations

import logging

from sqlalchemy import exists, select, update

from vpsd.agent.periodic import Periodic
from vpsd.core.errors import HostError
from vpsd.db.base import utcnow
from vpsd.db.models import Operation, Server, ServerConsole, ServerStatus
from vpsd.hypervisor.base import LivenessUnknown, PowerState, RunState
from vpsd.operations.context import OperationContext
from vpsd.operations.outbox import ACTIVE_OPERATION
from vpsd.operations.scope import on_host

log = logging.getLogger(__name__)

DIED = "the VM's QEMU process exited without a stop request (guest power-off, crash or kill)"
CAME_BACK = "the VM was found running although vpsd had it stopped"
DISK_FULL = "the disk is full: the guest's writes are paused; they resume when space is freed"
PAUSED = "the VM is paused by the hypervisor; stop or reboot the server to end it"
PAUSE_REASONS = {RunState.DISK_FULL: DISK_FULL, RunState.PAUSED: PAUSED}
CONSOLE_MIRROR_BYTES = 64 * 1024
"""How much of a console an agent mirrors for API processes elsewhere (the API's default)."""

Change = tuple[ServerStatus, str | None]


def reconcile_power_states(ctx: OperationContext, *, running_only: bool = False) -> int:
    """Correct servers whose VM says otherwise; return how many changed.

    ``running`` and ``paused`` servers are checked every time: a VM that died turns
    ``stopped``. The periodic check (``running_only``) also reads QEMU's run state: a VM
    whose CPUs QEMU paused turns ``paused`` (with the reason), and one paused on a full disk
    is continued once its filesystem has room, turning ``running`` again. It skips
    ``stopped`` servers: stopped VMs do not start by themselves, and a host may have
    thousands of them. The start-up pass reads liveness only (the periodic check reads the
    run state within one interval).

    A VM whose liveness cannot be read (``LivenessUnknown``) or whose monitor does not
    answer keeps its status until a later check can tell. Servers with an operation under
    way are left to it. Each correction is a conditional UPDATE, so a request that changed
    the server meanwhile wins.
    """
    idle = ~exists().where(Operation.server_id == Server.id, Operation.status.in_(ACTIVE_OPERATION))
    watched = [ServerStatus.RUNNING, ServerStatus.PAUSED]
    if not running_only:
        watched.append(ServerStatus.STOPPED)
    with ctx.db.read() as session:
        rows = session.execute(
            select(Server.id, Server.status, Server.status_reason).where(
                Server.status.in_(watched), idle, on_host(ctx.settings.host_name)
            )
        ).all()
    changed = 0
    for server_id, status, reason in rows:
        try:
            change = _observe(ctx, server_id, status, run_state=running_only)
        except LivenessUnknown as error:
            log.warning(
                "server %s: %s (%s); its status stays %s", server_id, error, error.detail, status
            )
            continue
        except (HostError, OSError) as error:
            log.warning(
                "server %s: cannot read its VM's state (%s); checked again later", server_id, error
            )
            continue
        if change is None or change == (status, reason):
            continue
        actual, new_reason = change
        with ctx.db.write() as session:
            result = session.execute(
                update(Server)
                .where(Server.id == server_id, Server.status == status, idle)
                .values(status=actual, status_reason=new_reason, updated_at=utcnow())
            )
        if result.rowcount:  # type: ignore[attr-defined]
            log.warning("server %s: %s -> %s (%s)", server_id, status, actual, new_reason)
            changed += 1
    return changed


def _observe(
    ctx: OperationContext, server_id: int, status: ServerStatus, *, run_state: bool
) -> Change | None:
    """What the server's status should be, by its VM; None when nothing can be said now."""
    info = ctx.driver.info(server_id)
    if info.power_state is PowerState.STOPPED:
        if status == ServerStatus.STOPPED:
            return None
        if info.reason:
            log.warning("server %s: %s", server_id, info.reason)  # host details: log only
        return ServerStatus.STOPPED, DIED
    if status == ServerStatus.STOPPED:
        return ServerStatus.RUNNING, CAME_BACK  # paused or not: the next check tells
    if not run_state:
        return None
    state = ctx.driver.run_state(server_id)
    if state is RunState.DISK_FULL and status == ServerStatus.PAUSED:
        state = ctx.driver.resume(server_id)
    if state is RunState.RUNNING:
        # A running server keeps its reason (a forced reboot's, say); a paused one is over.
        return (ServerStatus.RUNNING, None) if status == ServerStatus.PAUSED else None
    if state is RunState.OFF:
        return None  # it died meanwhile: the next check records it
    return ServerStatus.PAUSED, PAUSE_REASONS[state]


def _running_here(ctx: OperationContext) -> list[int]:
    """This host's servers whose VM runs (paused ones too): their consoles grow."""
    with ctx.db.read() as session:
        return list(
            session.scalars(
                select(Server.id).where(
                    Server.status.in_((ServerStatus.RUNNING, ServerStatus.PAUSED)),
                    on_host(ctx.settings.host_name),
                )
            )
        )


def trim_consoles(ctx: OperationContext) -> int:
    """Cut the console logs of running servers that grew past the configured size (a guest
    writing endlessly to its serial port must not fill the host's disk); return how many."""
    running = _running_here(ctx)
    trimmed = 0
    for server_id in running:
        try:
            trimmed += ctx.driver.trim_console(server_id, ctx.settings.console_log_max_bytes)
        except (HostError, OSError) as error:
            log.warning("server %s: cannot trim its console log: %s", server_id, error)
    return trimmed


def mirror_consoles(ctx: OperationContext, mirrored: dict[int, bytes]) -> int:
    """Copy the last ``CONSOLE_MIRROR_BYTES`` of each running server's console into the
    database, where API processes on other machines read it; only those that changed since
    ``mirrored`` (server id -> what was written last, updated here). How many were written."""
    running = _running_here(ctx)
    written = 0
    for server_id in running:
        try:
            tail = ctx.driver.console_tail(server_id, CONSOLE_MIRROR_BYTES)
        except (HostError, OSError) as error:
            log.warning("server %s: cannot read its console log: %s", server_id, error)
            continue
        if mirrored.get(server_id) == tail:
            continue
        with ctx.db.write() as session:
            session.merge(ServerConsole(server_id=server_id, tail=tail, updated_at=utcnow()))
        mirrored[server_id] = tail
        written += 1
    for gone in set(mirrored) - set(running):
        del mirrored[gone]  # a server that runs again is written again
    return written


class VmMonitor(Periodic):
    """Runs ``reconcile_power_states``, ``trim_consoles`` and ``mirror_consoles`` every
    ``interval`` seconds in a background thread."""

    def __init__(self, ctx: OperationContext, interval: float) -> None:
        super().__init__("vpsd-monitor", "checking the VMs", lambda: self.check(), interval)
        self.ctx = ctx
        self._mirrored: dict[int, bytes] = {}

    def check(self) -> None:
        """One look at every running VM."""
        reconcile_power_states(self.ctx, running_only=True)
        trim_consoles(self.ctx)
        mirror_consoles(self.ctx, self._mirrored)
