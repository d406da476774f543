"""Database rows to API shapes."""

from __future__ import annotations

from typing import Any

from vpsd.db.base import api_time
from vpsd.db.models import Snapshot
from vpsd.schemas import (
    BackupOut,
    BackupPolicyOut,
    BackupSource,
    ChangeOut,
    HostCapacityOut,
    HostOut,
    ImageOut,
    RestoreServerRef,
    ServerOut,
    ServerRef,
    SkippedSlot,
    SnapshotOut,
    SnapshotPolicyOut,
    SnapshotSource,
    SshEndpoint,
    SshKeyOut,
)
from vpsd.services.backup_policies import PolicyView
from vpsd.services.backups import BackupView
from vpsd.services.changes import ChangeView
from vpsd.services.hosts import HostView
from vpsd.services.images import ImageView
from vpsd.services.restores import RestoreView
from vpsd.services.servers import ServerView
from vpsd.services.snapshot_policies import SnapshotPolicyView
from vpsd.services.snapshots import SnapshotView
from vpsd.services.ssh_keys import SshKeyView


def server_out(server: ServerView) -> ServerOut:
    """A server as the API shows it."""
    ssh = None
    if server.ssh_host is not None and server.ssh_port is not None:
        ssh = SshEndpoint(host=server.ssh_host, port=server.ssh_port)
    return ServerOut(
        id=server.id,
        name=server.name,
        status=server.status,  # deleted servers are never shown
        status_reason=server.status_reason,
        memory_mb=server.memory_mb,
        vcpus=server.vcpus,
        disk_gb=server.disk_gb,
        image=server.image,
        ssh=ssh,
        source=(
            SnapshotSource(snapshot_id=server.source_snapshot_id)
            if server.source_snapshot_id is not None
            else BackupSource(backup_id=server.source_backup_id)
            if server.source_backup_id is not None
            else None
        ),
        created_at=server.created_at,
    )


def image_out(image: ImageView) -> ImageOut:
    """An image as the API shows it."""
    return ImageOut(
        id=image.id,
        slug=image.slug,
        name=image.name,
        os=image.os,
        size_mb=image.size_mb,
        min_disk_gb=image.min_disk_gb,
        min_memory_mb=image.min_memory_mb,
        status="available",
    )


def snapshot_json(snapshot: SnapshotView) -> dict[str, Any]:
    """A snapshot as ``SnapshotOut`` serializes it (the same keys, in the same order), built
    without a model: the list and show endpoints' hot path (a unit test holds the two equal)."""
    return {
        "id": snapshot.id,
        "server": {"id": snapshot.server_id, "name": snapshot.server_name},
        "name": snapshot.name,
        "status": snapshot.status,
        "size_mb": snapshot.size_mb,
        "created_at": api_time(snapshot.created_at),
        "description": snapshot.description,
        "status_reason": snapshot.status_reason,
        "consistency": snapshot.consistency,
        "memory": bool(snapshot.memory),
        "pause_ms": snapshot.pause_ms,
        "type": snapshot.type,
        "protected": bool(snapshot.protected),
        "expires_at": None if snapshot.expires_at is None else api_time(snapshot.expires_at),
    }


def snapshot_out(snapshot: Snapshot) -> SnapshotOut:
    """A snapshot as the page shows it."""
    return SnapshotOut(
        id=snapshot.id,
        server=ServerRef(id=snapshot.server.id, name=snapshot.server.name),
        name=snapshot.name,
        status=snapshot.status,  # deleting ones are never shown
        size_mb=snapshot.size_mb,
        created_at=snapshot.created_at,
        description=snapshot.description,
        status_reason=snapshot.status_reason,
        consistency=snapshot.consistency,
        memory=snapshot.memory,
        pause_ms=snapshot.pause_ms,
        type=snapshot.type,
        protected=snapshot.protected,
        expires_at=snapshot.expires_at,
    )


def ssh_key_out(key: SshKeyView) -> SshKeyOut:
    """An SSH key as the API shows it."""
    return SshKeyOut(
        id=key.id,
        name=key.name,
        public_key=key.public_key,
        fingerprint=key.fingerprint,
        created_at=key.created_at,
    )


def backup_out(backup: BackupView) -> BackupOut:
    """A backup as the API shows it."""
    return BackupOut(
        id=backup.id,
        server=ServerRef(id=backup.server.id, name=backup.server.name),
        name=backup.name,
        type=backup.type,
        status=backup.status,  # deleting ones are never shown
        size_mb=backup.size_mb,
        stored_mb=backup.stored_mb,
        created_at=backup.created_at,
        description=backup.description,
        status_reason=backup.status_reason,
        consistency=backup.consistency,
        progress=backup.progress,
        completed_at=backup.completed_at,
    )


def policy_out(policy: PolicyView) -> BackupPolicyOut:
    """A backup policy as the API shows it."""
    return BackupPolicyOut(
        enabled=policy.enabled,
        frequency=policy.frequency,
        hour=policy.hour,
        weekday=policy.weekday,
        keep=policy.keep,
        next_backup_at=policy.next_backup_at,
    )


def snapshot_policy_out(policy: SnapshotPolicyView) -> SnapshotPolicyOut:
    """A snapshot policy as the API shows it."""
    skipped = None
    if policy.skipped_slot is not None:
        skipped = SkippedSlot(slot=policy.skipped_slot, reason=policy.skipped_reason or "")
    return SnapshotPolicyOut(
        enabled=policy.enabled,
        frequency=policy.frequency,
        minute=policy.minute,
        hour=policy.hour,
        weekday=policy.weekday,
        keep=policy.keep,
        next_run_at=policy.next_run_at,
        last_skipped=skipped,
    )


def host_out(host: HostView) -> HostOut:
    """A host as admins see it."""
    return HostOut(
        id=host.id,
        name=host.name,
        state=host.state.value,
        last_heartbeat_at=host.last_heartbeat_at,
        servers=host.servers,
        capacity=HostCapacityOut(vcpus=host.vcpus, memory_mb=host.memory_mb, disk_gb=host.disk_gb),
    )


RESTORE_MESSAGE = (
    "Server is being restored from {source}. It is stopped at once, {how}, and it {after}; "
    "{duration}. Poll GET /api/v1/servers/{server_id}/ until its status is {final}."
)


def restore_message(restore: RestoreView, source: str, how: str, duration: str) -> str:
    """What a restore's answer says: how the server is restored from ``source``, and the
    status it ends in."""
    after, final = (
        ("is started again", "running")
        if restore.power_state == "running"
        else ("stays stopped", "stopped")
    )
    return RESTORE_MESSAGE.format(
        source=source, how=how, after=after, duration=duration,
        server_id=restore.server_id, final=final,
    )  # fmt: skip


def restore_server_ref(restore: RestoreView) -> RestoreServerRef:
    """The server a restore acts on, now ``restoring``."""
    return RestoreServerRef(id=restore.server_id, name=restore.server_name, status="restoring")


def change_out(change: ChangeView) -> ChangeOut:
    """A change as the API shows it."""
    return ChangeOut(
        id=change.id,
        server=ServerRef(id=change.server.id, name=change.server.name),
        status=change.status.value,
        phase=change.phase.value,
        status_reason=change.status_reason,
        command=change.command,
        health_check=change.health_check,
        timeout_seconds=change.timeout_seconds,
        keep_snapshot_hours=change.keep_snapshot_hours,
        snapshot_id=change.snapshot_id,
        exit_code=change.exit_code,
        output=change.output,
        output_length=change.output_length,
        health=change.health,
        created_at=change.created_at,
        finished_at=change.finished_at,
    )
