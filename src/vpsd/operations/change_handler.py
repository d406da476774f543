"""``change.apply``: a snapshot, a command in the guest, a health check, and a restore of the
snapshot when the command or the check fails (``services.changes``).

Each phase's result is committed on the change's row before the next phase begins, under
the operation's lease, so a change interrupted at any point (vpsd killed, its host's agent
restarted) goes on from where it was when its operation runs again, and always ends in a
state the user can read. A command found started but not finished (its outcome lost with the
process that watched it) counts as failed: the snapshot is restored. The snapshot outlives
a failed change; after a success it is kept ``keep_snapshot_hours``.
"""

from __future__ import annotations

import codecs
import logging
import math
import socket
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import Executable, exists, select, update

from vpsd.core.errors import HostError
from vpsd.db.base import utcnow
from vpsd.db.changes import Change, ChangePhase, ChangeStatus
from vpsd.db.models import Operation, OperationKind, ServerStatus, Snapshot, SnapshotStatus
from vpsd.hypervisor.base import ExecResult, PowerState, SavedState
from vpsd.operations.context import OperationContext
from vpsd.operations.job import Job, Result, set_server
from vpsd.operations.leases import LeaseLost
from vpsd.operations.payloads import ApplyChange, expect
from vpsd.operations.reasons import tenant_reason

log = logging.getLogger(__name__)

MIB = 1024 * 1024
OUTPUT_KEPT = 65536
"""Characters of a command's output kept (its last ones)."""
OUTPUT_RECORD_EVERY = 1.0
"""Seconds between writes of a running command's output (clients follow it live)."""
HEALTH_INTERVAL = 2.0
"""Seconds between tries of a failing health check (``Settings.change_health_seconds``)."""
CHECK_TIMEOUT = 5.0
"""Seconds one try of a check may take (a connection, a banner, a port probe)."""
CHECK_COMMAND_TIMEOUT = 60.0


def apply_change(ctx: OperationContext, job: Job) -> Result:
    """Run the change from the phase it is in to its end; the last phase's statements."""
    change_id = expect(job.payload, ApplyChange).change_id
    with ctx.db.read() as session:
        change = session.get(Change, change_id)
    if change is None or change.status != ChangeStatus.IN_PROGRESS:
        return []  # its server was deleted, or an earlier run recorded its end
    phase = change.phase
    if phase == ChangePhase.SNAPSHOT:
        phase = _take_snapshot(ctx, job, change)
    if phase == ChangePhase.COMMAND:
        phase, reason = _run_command(ctx, job, change)
        change.status_reason = reason
    if phase == ChangePhase.HEALTH:
        phase, reason = _check_health(ctx, job, change)
        change.status_reason = reason
    if phase == ChangePhase.ROLLBACK:
        _roll_back(ctx, job, change)
        return _finish(job, change, ChangeStatus.ROLLED_BACK, change.status_reason)
    return [
        *_finish(job, change, ChangeStatus.SUCCEEDED, None),
        *_keep_snapshot(job, change),
    ]


def change_failed(ctx: OperationContext, job: Job, reason: str) -> Result:
    """The change could not end as a success or a rollback: ``failed`` with the reason. The
    server runs on when its VM does (nothing was reverted), else it is in ``error``."""
    change_id = expect(job.payload, ApplyChange).change_id
    try:
        running = ctx.driver.info(job.server_id).power_state is PowerState.RUNNING
    except HostError:
        running = False
    server = (
        set_server(job, ServerStatus.RUNNING, None)
        if running
        else set_server(job, ServerStatus.ERROR, f"change {change_id} failed: {reason}")
    )
    return [
        update(Change)
        .where(Change.id == change_id, Change.status == ChangeStatus.IN_PROGRESS)
        .values(
            status=ChangeStatus.FAILED,
            phase=ChangePhase.DONE,
            status_reason=reason,
            finished_at=utcnow(),
        ),
        update(Snapshot)
        .where(Snapshot.id == job.snapshot_id, Snapshot.status == SnapshotStatus.IN_PROGRESS)
        .values(status=SnapshotStatus.FAILED, status_reason=reason, completed_at=utcnow()),
        server,
    ]


# --- the phases --------------------------------------------------------------------------


def _take_snapshot(ctx: OperationContext, job: Job, change: Change) -> ChangePhase:
    running = ctx.driver.info(job.server_id).power_state is PowerState.RUNNING
    taken = ctx.driver.snapshot_create(
        job.server_id, job.tag, fresh=job.attempts == 1, memory=running
    )
    completed = (
        update(Snapshot)
        .where(Snapshot.id == job.snapshot_id)
        .values(
            status=SnapshotStatus.COMPLETED,
            size_mb=math.ceil(taken.captured_bytes / MIB),
            consistency=taken.consistency,
            memory=taken.saved_state is not None,
            saved_state=taken.saved_state.as_dict() if taken.saved_state else None,
            pause_ms=round(taken.pause_seconds * 1000) if taken.pause_seconds else None,
            completed_at=utcnow(),
        )
    )
    _record(ctx, job, change.id, completed, phase=ChangePhase.COMMAND)
    return ChangePhase.COMMAND


def _run_command(ctx: OperationContext, job: Job, change: Change) -> tuple[ChangePhase, str | None]:
    if change.command_started_at is not None:
        # An earlier run started it and died before its end was known.
        lost = "interrupted: vpsd restarted while the command ran, so its outcome is unknown"
        _record(ctx, job, change.id, phase=ChangePhase.ROLLBACK, status_reason=lost)
        return ChangePhase.ROLLBACK, lost
    _record(ctx, job, change.id, command_started_at=utcnow())

    def record_output(text: str, length: int) -> None:
        _record(ctx, job, change.id, output=text, output_length=length)

    output = _Output(record_output)
    result = ctx.driver.guest_run(
        job.server_id,
        change.command,
        change.timeout_seconds,
        tail_bytes=OUTPUT_KEPT * 4,  # a character is at most 4 bytes of UTF-8
        on_output=output.add,
    )
    output.flush()
    reason = _command_failure(result, change.timeout_seconds)
    phase = ChangePhase.ROLLBACK if reason else ChangePhase.HEALTH
    _record(ctx, job, change.id, exit_code=result.exit_code, phase=phase, status_reason=reason)
    return phase, reason


def _command_failure(result: ExecResult, timeout: int) -> str | None:
    """Why the command's run is a failure, in words; None when it exited 0."""
    if result.timed_out:
        return f"the command did not end within {timeout} s and was killed"
    if result.interrupted:
        return "the command was lost: the guest rebooted, or its agent restarted, while it ran"
    if result.exit_code != 0:
        return f"the command failed (exit code {result.exit_code})"
    return None


def _check_health(
    ctx: OperationContext, job: Job, change: Change
) -> tuple[ChangePhase, str | None]:
    check = change.health_check
    deadline = time.monotonic() + ctx.settings.change_health_seconds
    while True:
        passed, detail = _check_once(ctx, job, check)
        if passed or time.monotonic() > deadline:
            break
        time.sleep(HEALTH_INTERVAL)
    name = next(iter(check))
    health = {"check": name, "passed": passed, "detail": detail, "checked_at": _now()}
    reason = None if passed else f"the health check failed: {detail}"
    phase = ChangePhase.DONE if passed else ChangePhase.ROLLBACK
    _record(ctx, job, change.id, health=health, phase=phase, status_reason=reason)
    return phase, reason


def _check_once(ctx: OperationContext, job: Job, check: dict[str, Any]) -> tuple[bool, str]:
    """One try of the health check: whether it passed, and what was seen."""
    try:
        if "ssh" in check:
            return _ssh_banner(job)
        if "tcp_port" in check:
            port = int(check["tcp_port"])
            if ctx.driver.guest_port_open(job.server_id, port, CHECK_TIMEOUT):
                return True, f"port {port} accepts connections in the guest"
            return False, f"nothing accepts connections on port {port} in the guest"
        result = ctx.driver.guest_run(
            job.server_id, str(check["command"]), CHECK_COMMAND_TIMEOUT, tail_bytes=4096
        )
        said = result.output.decode(errors="replace").replace("\x00", "").strip()[-500:]
        if result.exit_code == 0:
            return True, f"the check command exited 0{': ' + said if said else ''}"
        return False, f"{_command_failure(result, int(CHECK_COMMAND_TIMEOUT))}: {said}"
    except HostError as exc:
        return False, tenant_reason(OperationKind.CHANGE_APPLY, exc)


def _ssh_banner(job: Job) -> tuple[bool, str]:
    """The server's SSH port, reached as its users reach it, answers with an SSH banner."""
    if job.spec.ssh is None:
        return False, "the server has no SSH port"
    address = (job.spec.ssh.host, job.spec.ssh.port)
    try:
        with socket.create_connection(address, timeout=CHECK_TIMEOUT) as connection:
            banner = connection.recv(256)
    except OSError as exc:
        return False, f"SSH did not answer ({exc.strerror or exc})"
    if banner.startswith(b"SSH-"):
        return True, "SSH answers: " + banner.split(b"\r\n")[0].decode(errors="replace")
    return False, "the SSH port answered without an SSH banner"


def _roll_back(ctx: OperationContext, job: Job, change: Change) -> None:
    with ctx.db.read() as session:
        saved = session.scalar(select(Snapshot.saved_state).where(Snapshot.id == job.snapshot_id))
    _record(ctx, job, change.id, set_server(job, ServerStatus.RESTORING, None))
    if saved is not None:  # taken with memory: the guest resumes where it was
        ctx.driver.snapshot_resume(job.spec, job.tag, SavedState(**saved))
    else:
        ctx.driver.kill(job.server_id)
        ctx.driver.snapshot_restore(job.server_id, job.tag)
        ctx.driver.start(job.spec)


def _finish(job: Job, change: Change, status: ChangeStatus, reason: str | None) -> Result:
    return [
        update(Change)
        .where(Change.id == change.id)
        .values(status=status, phase=ChangePhase.DONE, status_reason=reason, finished_at=utcnow()),
        set_server(job, ServerStatus.RUNNING, None),
    ]


def _keep_snapshot(job: Job, change: Change) -> Result:
    """After a success the snapshot is kept ``keep_snapshot_hours``, then expires (its
    host's agent deletes it, as any expired snapshot)."""
    until = utcnow() + timedelta(hours=change.keep_snapshot_hours)
    return [
        update(Snapshot)
        .where(Snapshot.id == job.snapshot_id, Snapshot.protected.is_(False))
        .values(expires_at=until)
    ]


# --- recording ---------------------------------------------------------------------------


def _record(
    ctx: OperationContext, job: Job, change_id: int, *also: Executable, **values: object
) -> None:
    """Commit ``values`` on the change (and ``also``), only while the operation's lease is
    still this agent's: else ``LeaseLost``, and the agent holding it goes on instead."""
    held = exists().where(Operation.id == job.id, Operation.claimed_by == ctx.claimant)
    with ctx.db.write() as session:
        if not session.scalar(select(held)):
            raise LeaseLost(f"operation {job.id}: its lease was taken back while it ran")
        if values:
            session.execute(update(Change).where(Change.id == change_id).values(**values))
        for statement in also:
            session.execute(statement)


class _Output:
    """A command's output as text (UTF-8, bad bytes replaced, NUL dropped: PostgreSQL's text
    holds none), of which the last ``OUTPUT_KEPT`` characters are kept and recorded now and
    then through ``record(text, length)``."""

    def __init__(self, record: Callable[[str, int], None]) -> None:
        self.record = record
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""
        self.length = 0
        self.recorded_at = 0.0

    def add(self, chunk: bytes) -> None:
        """Take new bytes of output; record them when the last record is old enough."""
        decoded = self.decoder.decode(chunk).replace("\x00", "")
        self.text = (self.text + decoded)[-OUTPUT_KEPT:]
        self.length += len(decoded)
        if time.monotonic() - self.recorded_at >= OUTPUT_RECORD_EVERY:
            self.flush()

    def flush(self) -> None:
        """Record what was taken so far."""
        self.record(self.text, self.length)
        self.recorded_at = time.monotonic()


def _now() -> str:
    return utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")
