"""Database rows to API shapes."""

from __future__ import annotations

from vpsd.db.models import Server, Snapshot
from vpsd.schemas import ServerOut, ServerRef, SnapshotOut
from vpsd.services.snapshots import SnapshotView


def server_out(server: Server) -> ServerOut:
    """A server as the API shows it."""
    return ServerOut(
        id=server.id,
        name=server.name,
        status=server.status,  # deleted servers are never shown
        status_reason=server.status_reason,
        memory_mb=server.memory_mb,
        vcpus=server.vcpus,
        disk_gb=server.disk_gb,
        created_at=server.created_at,
    )


def snapshot_out(snapshot: Snapshot | SnapshotView) -> SnapshotOut:
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
    )
