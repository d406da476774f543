"""Keeps each server's status true to its VM: a VM that died outside vpsd is ``stopped``."""

from __future__ import annotations

import logging
import threading

from sqlalchemy import exists, select, update

from vpsd.db.base import utcnow
from vpsd.db.models import Operation, Server, ServerStatus
from vpsd.hypervisor.base import PowerState
from vpsd.operations.context import OperationContext
from vpsd.services.common import ACTIVE_OPERATION

log = logging.getLogger(__name__)

DIED = "the VM's QEMU process exited without a stop request (guest power-off, crash or kill)"
CAME_BACK = "the VM was found running although vpsd had it stopped"


def reconcile_power_states(ctx: OperationContext, *, running_only: bool = False) -> int:
    """Correct ``running``/``stopped`` servers whose VM says otherwise; return how many.

    ``running_only`` checks only servers believed running (the periodic check: VMs die, but
    stopped VMs do not start by themselves, and a host may have thousands of them).
    Servers with an operation under way are left to it. Each correction is a conditional
    UPDATE, so a request that changed the server meanwhile wins.
    """
    idle = ~exists().where(Operation.server_id == Server.id, Operation.status.in_(ACTIVE_OPERATION))
    watched = [ServerStatus.RUNNING]
    if not running_only:
        watched.append(ServerStatus.STOPPED)
    with ctx.db.read() as session:
        rows = session.execute(
            select(Server.id, Server.status).where(Server.status.in_(watched), idle)
        ).all()
    changed = 0
    for server_id, status in rows:
        info = ctx.driver.info(server_id)
        actual = ServerStatus.RUNNING if info.power_state is PowerState.RUNNING else None
        actual = actual or ServerStatus.STOPPED
        if actual == status:
            continue
        reason = DIED if actual == ServerStatus.STOPPED else CAME_BACK
        if info.reason:
            reason = f"{reason}: {info.reason}"
        with ctx.db.write() as session:
            result = session.execute(
                update(Server)
                .where(Server.id == server_id, Server.status == status, idle)
                .values(status=actual, status_reason=reason, updated_at=utcnow())
            )
        if result.rowcount:  # type: ignore[attr-defined]
            log.warning("server %s: %s -> %s (%s)", server_id, status, actual, reason)
            changed += 1
    return changed


class VmMonitor:
    """Runs ``reconcile_power_states`` every ``interval`` seconds in a background thread."""

    def __init__(self, ctx: OperationContext, interval: float) -> None:
        self.ctx = ctx
        self.interval = interval
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vpsd-monitor", daemon=True)

    def start(self) -> None:
        """Start watching."""
        self._thread.start()

    def stop(self) -> None:
        """Stop watching and wait for the thread to end."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        while not self._stopping.wait(self.interval):
            try:
                reconcile_power_states(self.ctx, running_only=True)
            except Exception:
                log.exception("checking the VMs failed")
