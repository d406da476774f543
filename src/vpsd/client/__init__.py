"""vpsd's Python SDK: a typed, synchronous client of the ``/api/v1/`` API over httpx.

::

    from vpsd.client import Client

    with Client("http://127.0.0.1:8000", token) as api:
        server = api.servers.create("web-1", disk_gb=10)
        api.wait_for_server(server.id, "running")
        snapshot = api.snapshots.create(server.id, "before-upgrade")
        api.wait_for_snapshot(snapshot.id)
        backup = api.backups.create(server.id, "weekly-offsite")
        api.wait_for_backup(backup.id)

It depends only on httpx and the Pydantic shapes of ``vpsd.schemas``: never on the server's
database, driver or web framework.
"""

from vpsd.client.client import Client, normalize_base_url
from vpsd.client.errors import (
    ApiError,
    AuthenticationError,
    BadRequestError,
    ConnectionFailed,
    NotFoundError,
    OperationFailed,
    VpsdClientError,
    WaitTimeout,
)
from vpsd.schemas import (
    BackupCreated,
    BackupOut,
    BackupPolicyOut,
    BackupRestoreStarted,
    ChangeOut,
    FieldError,
    Page,
    RestoreStarted,
    ServerDeleted,
    ServerOut,
    SkippedSlot,
    SnapshotCreated,
    SnapshotOut,
    SnapshotPolicyOut,
)

__all__ = [
    "ApiError",
    "AuthenticationError",
    "BackupCreated",
    "BackupOut",
    "BackupPolicyOut",
    "BackupRestoreStarted",
    "BadRequestError",
    "ChangeOut",
    "Client",
    "ConnectionFailed",
    "FieldError",
    "NotFoundError",
    "OperationFailed",
    "Page",
    "RestoreStarted",
    "ServerDeleted",
    "ServerOut",
    "SkippedSlot",
    "SnapshotCreated",
    "SnapshotOut",
    "SnapshotPolicyOut",
    "VpsdClientError",
    "WaitTimeout",
    "normalize_base_url",
]
