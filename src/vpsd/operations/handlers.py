"""One handler per operation kind: driver work outside any transaction, then the result.

Handlers are idempotent: after a crash an operation is executed again from the start, and
every step either finds its work already done or does it (see ``Driver``'s contract).
"""

from __future__ import annotations

import logging
import math
import time

from sqlalchemy import Executable, delete, select, update
from sqlalchemy.orm import joinedload

from vpsd.config import Settings
from vpsd.core.errors import HostError
from vpsd.db.base import utcnow
from vpsd.db.models import (
    Operation,
    OperationKind,
    OperationStatus,
    Server,
    ServerStatus,
    Snapshot,
    SnapshotStatus,
)
from vpsd.hypervisor.base import (
    DriverError,
    GuestConfig,
    LivenessUnknown,
    PowerState,
    SavedState,
    SshForward,
    VmSpec,
)
from vpsd.hypervisor.images.store import guest_image
from vpsd.metrics import observe_operation
from vpsd.operations import backup_handlers, change_handler, payloads
from vpsd.operations.context import OperationContext
from vpsd.operations.job import (
    FailureHandler,
    Handler,
    Job,
    Result,
    return_to_prior_power,
    set_server,
)
from vpsd.operations.leases import LeaseLost
from vpsd.operations.payloads import CreateServer, SnapshotSource, expect
from vpsd.operations.reasons import tenant_reason
from vpsd.sshkeys import guest_keys

log = logging.getLogger(__name__)
MIB = 1024 * 1024
LIVENESS_RETRY_DELAYS: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)
"""Seconds between the runs of an operation whose VM's liveness could not be read: the
handlers are idempotent, so the operation is simply run again, and fails only after these."""


def _server_failed(ctx: OperationContext, job: Job, reason: str) -> Result:
    return [set_server(job, ServerStatus.ERROR, reason)]


# --- servers -----------------------------------------------------------------------------


def _server_create(ctx: OperationContext, job: Job) -> Result:
    source = expect(job.payload, CreateServer).source
    if source is not None and not ctx.driver.disks(job.server_id):
        if isinstance(source, SnapshotSource):
            ctx.driver.snapshot_clone(source.server_id, source.tag, job.spec)
        else:
            backup_handlers.restore_new_disks(ctx, job)
    ctx.driver.start(job.spec)  # creates the disks first when they are missing
    return [set_server(job, ServerStatus.RUNNING, None), _disks_made(job, made=True)]


def _server_create_failed(ctx: OperationContext, job: Job, reason: str) -> Result:
    try:
        made = bool(ctx.driver.disks(job.server_id))
    except HostError:
        made = False  # unknown: a start refuses until a create is tried again
    return [*_server_failed(ctx, job, reason), _disks_made(job, made=made)]


def _disks_made(job: Job, *, made: bool) -> Executable:
    """Record whether the job's server's disks exist, for API processes anywhere."""
    return update(Server).where(Server.id == job.server_id).values(disks_made=made)


def _server_start(ctx: OperationContext, job: Job) -> Result:
    if job.copied and not ctx.driver.disks(job.server_id):
        raise DriverError(
            "this server's disk was never made from its source (its creation failed); delete "
            "the server and create it again"
        )
    ctx.driver.start(job.spec)
    return [set_server(job, ServerStatus.RUNNING, None)]


def _power_down(ctx: OperationContext, job: Job) -> str | None:
    """ACPI power-down, forced after the timeout; the reason to show when it was forced."""
    timeout = ctx.settings.stop_timeout
    stopped = ctx.driver.stop(job.server_id, timeout)
    if stopped.paused:
        return "forced off: the VM was paused, so its guest could not power down by itself"
    if stopped.forced:
        return f"forced off: the guest did not power down within {timeout:g} s of the ACPI request"
    return None


def _server_stop(ctx: OperationContext, job: Job) -> Result:
    return [set_server(job, ServerStatus.STOPPED, _power_down(ctx, job))]


def _server_reboot(ctx: OperationContext, job: Job) -> Result:
    forced = _power_down(ctx, job)
    ctx.driver.start(job.spec)
    return [set_server(job, ServerStatus.RUNNING, forced and f"rebooted, {forced}")]


def _server_delete(ctx: OperationContext, job: Job) -> Result:
    ctx.driver.destroy(job.server_id)
    return [
        delete(Snapshot).where(Snapshot.server_id == job.server_id),
        set_server(job, ServerStatus.DELETED, None),
        # The SSH port is free for the next server.
        update(Server).where(Server.id == job.server_id).values(ssh_port=None),
    ]


# --- snapshots ---------------------------------------------------------------------------


def _snapshot_create(ctx: OperationContext, job: Job) -> Result:
    with ctx.db.read() as session:
        snapshot = session.get(Snapshot, job.snapshot_id)
        wanted = snapshot is not None and snapshot.status == SnapshotStatus.IN_PROGRESS
        memory = snapshot is not None and snapshot.memory
    if not wanted:
        return []  # deleted before it was taken: its delete operation cleans up
    # Tags are never reused: on its first attempt nothing can have taken this one yet.
    taken = ctx.driver.snapshot_create(
        job.server_id, job.tag, fresh=job.attempts == 1, memory=memory
    )
    recorded: dict[str, object] = {}
    if taken.saved_state is not None:
        recorded["saved_state"] = taken.saved_state.as_dict()
    if taken.pause_seconds is not None:  # None: a retry found it taken, and the pause unknown
        recorded["pause_ms"] = round(taken.pause_seconds * 1000)
    return [
        update(Snapshot)
        .where(Snapshot.id == job.snapshot_id, Snapshot.status == SnapshotStatus.IN_PROGRESS)
        .values(
            status=SnapshotStatus.COMPLETED,
            size_mb=math.ceil(taken.captured_bytes / MIB),
            consistency=taken.consistency,
            completed_at=utcnow(),
            **recorded,
        )
    ]


def _snapshot_create_failed(ctx: OperationContext, job: Job, reason: str) -> Result:
    return [
        update(Snapshot)
        .where(Snapshot.id == job.snapshot_id, Snapshot.status == SnapshotStatus.IN_PROGRESS)
        .values(status=SnapshotStatus.FAILED, status_reason=reason, completed_at=utcnow())
    ]


def _snapshot_restore(ctx: OperationContext, job: Job) -> Result:
    with ctx.db.read() as session:
        saved = session.scalar(select(Snapshot.saved_state).where(Snapshot.id == job.snapshot_id))
    if saved is not None:
        # Taken with memory: the guest resumes where it was, running whatever it was before.
        ctx.driver.snapshot_resume(job.spec, job.tag, SavedState(**saved))
        return [set_server(job, ServerStatus.RUNNING, None)]
    # A hard stop, as Proxmox does on rollback: the disks are about to be overwritten.
    ctx.driver.kill(job.server_id)
    ctx.driver.snapshot_restore(job.server_id, job.tag)
    return return_to_prior_power(ctx, job)


def _snapshot_restore_failed(ctx: OperationContext, job: Job, reason: str) -> Result:
    # A restore kills the VM before it touches the disks: a VM still running was left as it
    # was (a resume refused before anything changed), and keeps running.
    try:
        running = ctx.driver.info(job.server_id).power_state is PowerState.RUNNING
    except HostError:
        running = False
    status = ServerStatus.RUNNING if running else ServerStatus.ERROR
    return [set_server(job, status, f"restore from snapshot {job.snapshot_id} failed: {reason}")]


def _snapshot_delete(ctx: OperationContext, job: Job) -> Result:
    if job.snapshot_tag is None:
        return []  # its server's deletion took it
    ctx.driver.snapshot_delete(job.server_id, job.tag)
    return [delete(Snapshot).where(Snapshot.id == job.snapshot_id)]


def _snapshot_delete_failed(ctx: OperationContext, job: Job, reason: str) -> Result:
    # The snapshot stays hidden (``deleting``); recovery queues its deletion again.
    return [update(Snapshot).where(Snapshot.id == job.snapshot_id).values(status_reason=reason)]


HANDLERS: dict[OperationKind, tuple[Handler, FailureHandler]] = {
    OperationKind.SERVER_CREATE: (_server_create, _server_create_failed),
    OperationKind.SERVER_START: (_server_start, _server_failed),
    OperationKind.SERVER_STOP: (_server_stop, _server_failed),
    OperationKind.SERVER_REBOOT: (_server_reboot, _server_failed),
    OperationKind.SERVER_DELETE: (_server_delete, _server_failed),
    OperationKind.SNAPSHOT_CREATE: (_snapshot_create, _snapshot_create_failed),
    OperationKind.SNAPSHOT_RESTORE: (_snapshot_restore, _snapshot_restore_failed),
    OperationKind.SNAPSHOT_DELETE: (_snapshot_delete, _snapshot_delete_failed),
    OperationKind.CHANGE_APPLY: (change_handler.apply_change, change_handler.change_failed),
    **backup_handlers.HANDLERS,
}


def vm_spec(server: Server, settings: Settings) -> VmSpec:
    """What the driver needs to create and boot ``server`` (its image loaded)."""
    if server.image is None:
        return VmSpec(server.id, server.memory_mb, server.vcpus, server.disk_gb)
    image = server.image
    keys = guest_keys(server.authorized_keys, server.id)
    return VmSpec(
        server.id,
        server.memory_mb,
        server.vcpus,
        server.disk_gb,
        image=guest_image(settings.images_dir / image.build_name, image.cmdline),
        guest=GuestConfig(instance_id=server.uuid, hostname=server.name, authorized_keys=keys),
        ssh=(
            SshForward(settings.ssh_listen_address, server.ssh_port)
            if server.ssh_port is not None
            else None
        ),
    )


def load_job(ctx: OperationContext, operation_id: int) -> Job | None:
    """The operation with its server's VM spec, or None if it no longer exists."""
    with ctx.db.read() as session:
        operation = session.get(Operation, operation_id)
        if operation is None:
            return None
        server = session.get(Server, operation.server_id, options=[joinedload(Server.image)])
        assert server is not None  # operations cascade with their server
        tag = None
        if operation.snapshot_id is not None:
            tag = session.scalar(select(Snapshot.tag).where(Snapshot.id == operation.snapshot_id))
        return Job(
            operation.id,
            operation.kind,
            vm_spec(server, ctx.settings),
            operation.snapshot_id,
            tag,
            operation.attempts,
            payloads.load(operation.kind, operation.payload),
            operation.backup_id,
            copied=server.source_snapshot_id is not None or server.source_backup_id is not None,
        )


def _finish(
    ctx: OperationContext, job: Job, result: Result, error: str | None, *, leased: bool = False
) -> None:
    """Apply the operation's result and mark it finished, in one transaction; with
    ``leased``, only while its lease is still this agent's (``LeaseLost`` otherwise).

    Were these two commits, a crash between them would run a completed restore again.
    """
    fence = [Operation.claimed_by == ctx.claimant] if leased else []
    with ctx.db.write() as session:
        finished = session.execute(
            update(Operation)
            .where(Operation.id == job.id, *fence)
            .values(
                status=OperationStatus.FAILED if error else OperationStatus.COMPLETED,
                error=error,
                finished_at=utcnow(),
            )
        )
        if leased and not finished.rowcount:  # type: ignore[attr-defined]
            raise LeaseLost(f"operation {job.id}: its lease was taken back while it ran")
        for statement in result:
            session.execute(statement)


def execute(ctx: OperationContext, operation_id: int) -> None:
    """Run an operation claimed under ``ctx.claimant`` to its end: ``completed``, or
    ``failed`` with the reason; ``LeaseLost`` when its lease was taken back meanwhile.

    Driver errors are the user's to see (a failed snapshot says why); anything else is a
    bug, logged with its traceback and shown as an internal error.
    """
    job = load_job(ctx, operation_id)
    if job is None:
        return
    run, fail = HANDLERS[job.kind]
    log.info("operation %s (%s) on server %s started", job.id, job.kind, job.server_id)
    started = time.monotonic()
    try:
        result = _run_while_liveness_unknown(ctx, job, run)
    except HostError as error:
        reason = tenant_reason(job.kind, error)
        log.warning(
            "operation %s (%s) failed: %s%s",
            job.id,
            job.kind,
            reason,
            "".join(f" ({why})" for why in (str(error), error.detail) if why and why != reason),
        )
    except Exception:
        log.exception("operation %s (%s) crashed", job.id, job.kind)
        reason = "internal error in vpsd; see the service log"
    else:
        _finish(ctx, job, result, None, leased=True)
        log.info("operation %s (%s) completed", job.id, job.kind)
        observe_operation(job.kind, "completed", time.monotonic() - started)
        return
    _finish(ctx, job, fail(ctx, job, reason), reason, leased=True)
    observe_operation(job.kind, "failed", time.monotonic() - started)


def _run_while_liveness_unknown(ctx: OperationContext, job: Job, run: Handler) -> Result:
    """Run the handler; while the driver cannot tell whether the VM runs, wait and run it
    again (handlers are idempotent), raising the last ``LivenessUnknown`` in the end."""
    for delay in LIVENESS_RETRY_DELAYS:
        try:
            return run(ctx, job)
        except LivenessUnknown as error:
            log.warning(
                "operation %s (%s): %s (%s); trying again in %g s",
                job.id, job.kind, error, error.detail, delay,
            )  # fmt: skip
            time.sleep(delay)
    return run(ctx, job)


def abandon(ctx: OperationContext, operation_id: int, reason: str) -> None:
    """Fail an operation without running it, applying its kind's failure result."""
    job = load_job(ctx, operation_id)
    if job is None:
        return
    log.warning("operation %s (%s) abandoned: %s", job.id, job.kind, reason)
    _, fail = HANDLERS[job.kind]
    _finish(ctx, job, fail(ctx, job, reason), reason)
