"""The backup operations: take one, restore one in place, forget one, make a new server's
disks from one.

A backup reads a point in time from a temporary internal snapshot (taken as snapshots are:
filesystems frozen when the guest agent answers), streams each disk to the backup store,
and deletes the snapshot. A rerun after a crash forgets what the interrupted attempt
stored (found by the backup's uuid) and starts over; recovery deletes temporary snapshots
no operation will. A stop or reboot of the server queued behind a backup cancels it
(``preemption``).

A restore first checks that the store still holds the backup (before the server is
stopped), then rewrites the disks in place, each keeping its state to fall back to until
all are written (``Driver.finish_rewrite``): a failed or interrupted restore puts them back
as they were, and never leaves a mix that could be booted.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, update

from vpsd.backups import chunks
from vpsd.backups.base import BackupStoreError, SavedDisk
from vpsd.core import cancellation
from vpsd.core.disks import DiskChanges
from vpsd.core.errors import HostError
from vpsd.db.base import utcnow
from vpsd.db.models import Backup, BackupStatus, OperationKind, ServerStatus
from vpsd.hypervisor.base import DriverError, PowerState
from vpsd.operations.context import OperationContext
from vpsd.operations.job import (
    FailureHandler,
    Handler,
    Job,
    Result,
    return_to_prior_power,
    set_server,
)
from vpsd.operations.reasons import tenant_reason

log = logging.getLogger(__name__)
MIB = 1024 * 1024
PROGRESS_INTERVAL = 2.0
"""Seconds between two records of a backup's progress."""


@dataclass(frozen=True, slots=True)
class _Backup:
    id: int
    uuid: str
    status: BackupStatus
    snapshot_tag: str
    disks: list[dict[str, Any]]

    @property
    def checkpoint(self) -> str:
        """The name of the change record started at this backup's point in time."""
        return self.uuid.replace("-", "")


def _load(ctx: OperationContext, job: Job) -> _Backup | None:
    with ctx.db.read() as session:
        backup = session.get(Backup, job.backup_id)
        if backup is None:
            return None
        return _Backup(
            backup.id, backup.uuid, backup.status, backup.snapshot_tag, list(backup.disks)
        )


def _filename(disk: str) -> str:
    return f"{disk}.raw"


def _previous(ctx: OperationContext, job: Job, backup: _Backup) -> _Backup | None:
    """The server's newest completed backup stored as chunks: the base the new one reads
    changes since (the driver trusts its change record only if it is that backup's)."""
    with ctx.db.read() as session:
        found = session.scalars(
            select(Backup)
            .where(
                Backup.server_id == job.server_id,
                Backup.status == BackupStatus.COMPLETED,
                Backup.id != backup.id,
            )
            .order_by(Backup.completed_at.desc(), Backup.id.desc())
            .limit(1)
        ).first()
        if found is None or not all(d.get("layout") == chunks.FORMAT for d in found.disks):
            return None
        return _Backup(found.id, found.uuid, found.status, found.snapshot_tag, list(found.disks))


def _forget_stored(ctx: OperationContext, uuid: str) -> None:
    ctx.backups.forget(ctx.backups.find({"backup": uuid}))


# --- take ----------------------------------------------------------------------------------


def _backup_create(ctx: OperationContext, job: Job) -> Result:
    backup = _load(ctx, job)
    if backup is None or backup.status != BackupStatus.IN_PROGRESS:
        return []  # deleted before it was taken: its delete operation forgets any data
    if job.attempts > 1:
        # An interrupted attempt may have left a lock and stored disks; its snapshot and
        # change record are replaced by the new backup point.
        ctx.backups.unlock_stale()
        _forget_stored(ctx, backup.uuid)
    previous = _previous(ctx, job, backup)
    point = ctx.driver.backup_point_create(
        job.server_id,
        backup.snapshot_tag,
        backup.checkpoint,
        previous.checkpoint if previous is not None else None,
    )
    kept = False
    try:
        with ctx.cancellations.scope(job.id):
            saved = _store_disks(ctx, job, backup, point.disks, previous)
        kept = True
    except BaseException:
        with suppress(HostError):
            ctx.backups.unlock_stale()  # a restic killed (cancelled, say) left its lock
            _forget_stored(ctx, backup.uuid)
        raise
    finally:
        ctx.driver.backup_point_finish(
            job.server_id, backup.snapshot_tag, backup.checkpoint, kept=kept
        )
    return [
        update(Backup)
        .where(Backup.id == backup.id, Backup.status == BackupStatus.IN_PROGRESS)
        .values(
            status=BackupStatus.COMPLETED,
            size_mb=math.ceil(point.captured_bytes / MIB),
            stored_mb=math.ceil(sum(disk.added_bytes for _, disk, _ in saved) / MIB),
            consistency=point.consistency,
            progress=100,
            disks=[
                {
                    "name": changes.name,
                    "size_bytes": disk.size_bytes,
                    "snapshot": disk.snapshot,
                    "layout": disk.layout,
                    "incremental": disk.incremental,
                    "read_bytes": disk.read_bytes,
                    "chain_break": changes.chain_break,
                }
                for _, disk, changes in saved
            ],
            completed_at=utcnow(),
        )
    ]


def _store_disks(
    ctx: OperationContext,
    job: Job,
    backup: _Backup,
    points: tuple[DiskChanges, ...],
    previous: _Backup | None,
) -> list[tuple[str, SavedDisk, DiskChanges]]:
    saved: list[tuple[str, SavedDisk, DiskChanges]] = []
    parents = {str(d["name"]): str(d["snapshot"]) for d in previous.disks} if previous else {}
    progress = _ProgressWriter(ctx, backup.id, sum(disk.size_bytes for disk in points))
    for changes in points:
        tags = {"backup": backup.uuid, "disk": changes.name, "server": str(job.server_id)}
        with ctx.driver.backup_source(job.server_id, backup.snapshot_tag, changes) as source:
            stored = ctx.backups.save_disk(
                source,
                tags,
                checkpoint=backup.checkpoint,
                parent=parents.get(changes.name),
                on_progress=progress.update,
            )
        cancellation.raise_if_cancelled()
        progress.disk_done(changes.size_bytes)
        if stored.size_bytes != changes.size_bytes:
            raise BackupStoreError(
                "the disk could not be read whole (the operator's log has the details)",
                f"{changes.name}: stored {stored.size_bytes} of {changes.size_bytes} bytes",
            )
        if changes.chain_break is not None:
            log.info(
                "backup %s of %s read whole: %s", backup.uuid, changes.name, changes.chain_break
            )
        saved.append((changes.name, stored, changes))
    return saved


class _ProgressWriter:
    """Records a backup's progress (percent of all its disks' bytes), at most every
    ``PROGRESS_INTERVAL`` seconds: polling clients see it move, the database is not flooded."""

    def __init__(self, ctx: OperationContext, backup_id: int, total_bytes: int) -> None:
        self.ctx = ctx
        self.backup_id = backup_id
        self.total = max(total_bytes, 1)
        self.earlier_disks = 0
        self.recorded = 0
        self.recorded_at = 0.0

    def update(self, disk_bytes_done: int) -> None:
        """The current disk's bytes stored so far."""
        percent = min(99, (self.earlier_disks + disk_bytes_done) * 100 // self.total)
        now = time.monotonic()
        if percent <= self.recorded or now - self.recorded_at < PROGRESS_INTERVAL:
            return
        with self.ctx.db.write() as session:
            session.execute(
                update(Backup)
                .where(Backup.id == self.backup_id, Backup.status == BackupStatus.IN_PROGRESS)
                .values(progress=percent)
            )
        self.recorded, self.recorded_at = percent, now

    def disk_done(self, size_bytes: int) -> None:
        """The current disk is stored whole."""
        self.earlier_disks += size_bytes


def _backup_create_failed(ctx: OperationContext, job: Job, reason: str) -> Result:
    backup = _load(ctx, job)
    if backup is not None:
        # Abandoned without a run, its temporary snapshot and change record may still be
        # on the disks; the previous record stays the base of the next backup.
        with suppress(HostError):
            ctx.driver.backup_point_finish(
                job.server_id, backup.snapshot_tag, backup.checkpoint, kept=False
            )
    return [
        update(Backup)
        .where(Backup.id == job.backup_id, Backup.status == BackupStatus.IN_PROGRESS)
        .values(
            status=BackupStatus.FAILED, status_reason=reason, progress=None, completed_at=utcnow()
        )
    ]


# --- restore ---------------------------------------------------------------------------------


NOT_STORED = "this backup is no longer in the backup storage (the operator's log has the details)"


def _check_stored(ctx: OperationContext, backup: _Backup) -> None:
    """Raise ``BackupStoreError`` when the store cannot load every disk of ``backup``."""
    absent = ctx.backups.absent([str(disk["snapshot"]) for disk in backup.disks])
    if absent:
        raise BackupStoreError(
            NOT_STORED,
            f"backup {backup.id} ({backup.uuid}): stored disks {', '.join(absent)} are not in "
            "the repository",
        )


def _write_disks(ctx: OperationContext, job: Job, backup: _Backup) -> None:
    """Stream every disk of ``backup`` from the store onto the job's server's disks."""
    for disk in backup.disks:
        name, size = str(disk["name"]), int(disk["size_bytes"])
        with ctx.driver.disk_writer(job.spec, name, size) as sink:
            if disk.get("layout") == chunks.FORMAT:
                ctx.backups.load_disk(str(disk["snapshot"]), name, size, sink)
            else:  # a backup from before chunks: one raw file
                ctx.backups.load(str(disk["snapshot"]), _filename(name), sink)


def _completed(ctx: OperationContext, job: Job) -> _Backup:
    backup = _load(ctx, job)
    if backup is None or backup.status != BackupStatus.COMPLETED:
        raise DriverError(f"backup {job.backup_id} no longer exists")
    return backup


def _backup_restore(ctx: OperationContext, job: Job) -> Result:
    backup = _completed(ctx, job)
    try:
        _check_stored(ctx, backup)  # before the hard stop: a backup not there changes nothing
    except HostError as error:
        raise _noting(job, error, "the server was not changed") from error
    ctx.driver.kill(job.server_id)  # a hard stop, as for a snapshot: the disks are replaced
    try:
        _write_disks(ctx, job, backup)
    except HostError as error:
        ctx.driver.finish_rewrite(job.server_id, keep=False)
        with suppress(HostError):
            ctx.backups.unlock_stale()  # a restic that died mid-stream left its lock
        raise _noting(job, error, "its disks were put back as they were") from error
    ctx.driver.finish_rewrite(job.server_id, keep=True)
    return return_to_prior_power(ctx, job)


def _noting(job: Job, error: HostError, note: str) -> DriverError:
    """``error`` in the tenant's words, with what became of the server."""
    noted = DriverError(f"{tenant_reason(job.kind, error)}; {note}")
    noted.detail = "; ".join(filter(None, (str(error), error.detail)))
    return noted


def _backup_restore_failed(ctx: OperationContext, job: Job, reason: str) -> Result:
    """The server as the driver finds it: disks an interrupted run left half-written are put
    back first; ``error`` only when that fails (its disks are then incomplete, and ``start``
    refuses them), or the VM's state cannot be read."""
    failed = f"restore from backup {job.backup_id} failed: {reason}"
    try:
        ctx.driver.finish_rewrite(job.server_id, keep=False)
        running = ctx.driver.info(job.server_id).power_state is PowerState.RUNNING
    except HostError as error:
        log.warning(
            "server %s: after a failed restore: %s (%s)", job.server_id, error, error.detail
        )
        return [set_server(job, ServerStatus.ERROR, failed)]
    return [set_server(job, ServerStatus.RUNNING if running else ServerStatus.STOPPED, failed)]


def restore_new_disks(ctx: OperationContext, job: Job) -> None:
    """Make a new server's disks from the backup its create operation names."""
    backup = _completed(ctx, job)
    _check_stored(ctx, backup)
    _write_disks(ctx, job, backup)


# --- forget ----------------------------------------------------------------------------------


def _backup_delete(ctx: OperationContext, job: Job) -> Result:
    backup = _load(ctx, job)
    if backup is None:
        return []
    _forget_stored(ctx, backup.uuid)
    return [delete(Backup).where(Backup.id == backup.id)]


def _backup_delete_failed(ctx: OperationContext, job: Job, reason: str) -> Result:
    # The backup stays hidden (``deleting``); recovery queues its deletion again.
    return [update(Backup).where(Backup.id == job.backup_id).values(status_reason=reason)]


HANDLERS: dict[OperationKind, tuple[Handler, FailureHandler]] = {
    OperationKind.BACKUP_CREATE: (_backup_create, _backup_create_failed),
    OperationKind.BACKUP_RESTORE: (_backup_restore, _backup_restore_failed),
    OperationKind.BACKUP_DELETE: (_backup_delete, _backup_delete_failed),
}
