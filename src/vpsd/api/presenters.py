"""Database rows to API shapes."""

from __future__ import annotations

from vpsd.db.models import Snapshot
from vpsd.schemas import ImageOut, ServerOut, ServerRef, SnapshotOut, SshEndpoint, SshKeyOut
from vpsd.services.images import ImageView
from vpsd.services.servers import ServerView
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
        consistency=snapshot.consistency,
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
