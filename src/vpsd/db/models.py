"""The tables: accounts and their API tokens, servers, snapshots, backups and durable
operations."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal
from uuid import uuid4

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship
from sqlalchemy.sql.expression import false as sa_false
from sqlalchemy.sql.expression import true as sa_true

from vpsd.db.base import Base, UTCDateTime, utcnow

# BIGINT on PostgreSQL, INTEGER (the rowid alias) on SQLite.
Id = BigInteger().with_variant(Integer(), "sqlite")


class ServerStatus(StrEnum):
    """A server's lifecycle state; allowed transitions live in ``vpsd.services.states``."""

    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    """The VM's process lives but QEMU paused its CPUs (e.g. its disk's filesystem is full)."""
    STOPPING = "stopping"
    STOPPED = "stopped"
    REBOOTING = "rebooting"
    RESTORING = "restoring"
    DELETING = "deleting"
    DELETED = "deleted"
    ERROR = "error"


class SnapshotStatus(StrEnum):
    """``deleting`` snapshots are already gone from the API; a worker reclaims their space."""

    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    DELETING = "deleting"


class SnapshotType(StrEnum):
    """Manual snapshots are the user's; automatic ones the snapshot policy's (rotated)."""

    MANUAL = "manual"
    AUTOMATIC = "automatic"


class OperationStatus(StrEnum):
    """An operation is ``pending`` until a runner claims it, then ``running`` until it ends."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class OperationKind(StrEnum):
    """The slow work a runner executes, one handler each (``vpsd.operations.handlers``)."""

    SERVER_CREATE = "server.create"
    SERVER_START = "server.start"
    SERVER_STOP = "server.stop"
    SERVER_REBOOT = "server.reboot"
    SERVER_DELETE = "server.delete"
    SNAPSHOT_CREATE = "snapshot.create"
    SNAPSHOT_RESTORE = "snapshot.restore"
    SNAPSHOT_DELETE = "snapshot.delete"
    BACKUP_CREATE = "backup.create"
    BACKUP_RESTORE = "backup.restore"
    BACKUP_DELETE = "backup.delete"
    CHANGE_APPLY = "change.apply"


class BackupStatus(StrEnum):
    """``deleting`` backups are already gone from the API; a worker forgets their data."""

    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    DELETING = "deleting"


class BackupType(StrEnum):
    """Manual backups are the user's (at most 10 per server); automatic ones the policy's."""

    MANUAL = "manual"
    AUTOMATIC = "automatic"


class Account(Base):
    """A customer: owns servers and API tokens.

    The ``quota_*`` columns override the settings' default quotas for this account; None
    means the default (``VPSD_QUOTA_*``). See ``vpsd.services.quotas``.
    """

    __tablename__ = "accounts"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    quota_servers: Mapped[int | None] = mapped_column(Integer)
    quota_vcpus: Mapped[int | None] = mapped_column(Integer)
    quota_memory_mb: Mapped[int | None] = mapped_column(Integer)
    quota_disk_gb: Mapped[int | None] = mapped_column(Integer)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa_false())
    """Admins also see the hosts (``/api/v1/hosts/``); ``vpsd token create --admin``."""
    password_hash: Mapped[str | None] = mapped_column(String(255))
    """An argon2 hash (``vpsd account set-password``) for the web panel; None: no password,
    the account signs in to the panel with an API token."""


class HostState(StrEnum):
    """What an operator set: ``up`` takes new servers, ``draining`` keeps its servers but
    takes no new ones. A host whose heartbeat stopped shows ``down`` (never stored)."""

    UP = "up"
    DRAINING = "draining"
    DOWN = "down"


class Host(Base):
    """A hypervisor host: where servers run. Its capacity is what it reported at its last
    heartbeat, before the overcommit ratios (also its own, from its settings)."""

    __tablename__ = "hosts"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    state: Mapped[HostState] = mapped_column(String(16))
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    """Total memory less the host's reserve."""
    disk_gb: Mapped[float] = mapped_column(Float)
    """Free space of the host's data dir filesystem, in GiB (a fraction counts: it is
    multiplied by the disk overcommit ratio)."""
    cpu_overcommit: Mapped[float] = mapped_column(Float)
    memory_overcommit: Mapped[float] = mapped_column(Float)
    disk_overcommit: Mapped[float] = mapped_column(Float)
    last_heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    ssh_host: Mapped[str | None] = mapped_column(String(255))
    """The address its servers' SSH forwards are reached at (its ``VPSD_SSH_PUBLIC_HOST``)."""


class ServerConsole(Base):
    """The last bytes of a running server's serial console, mirrored by its host's agent
    for API processes on other machines (which cannot read the host's files)."""

    __tablename__ = "server_consoles"

    server_id: Mapped[int] = mapped_column(
        ForeignKey("servers.id", ondelete="CASCADE"), primary_key=True
    )
    tail: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ApiToken(Base):
    """A bearer token; only its SHA-256 is stored, ``prefix`` identifies it to people."""

    __tablename__ = "api_tokens"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    prefix: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    account: Mapped[Account] = relationship()


class WebSession(Base):
    """A signed-in browser of the web panel (``vpsd.web``): the cookie holds a random secret,
    only its SHA-256 is stored. Signed in with an API token, the session ends with it."""

    __tablename__ = "web_sessions"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    token_id: Mapped[int | None] = mapped_column(ForeignKey("api_tokens.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)

    account: Mapped[Account] = relationship()


class SignInFailure(Base):
    """A failed panel sign-in, counted against one key (a client address, an account name):
    kept in the database so that every API process counts the same failures
    (``vpsd.services.sign_in_throttle``). The key is stored as its SHA-256 (``key_hash``),
    and only for the throttle's window."""

    __tablename__ = "sign_in_failures"
    __table_args__ = (
        Index("ix_sign_in_failures_key_hash_failed_at", "key_hash", "failed_at"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    failed_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class ImageStatus(StrEnum):
    """``available`` images can be chosen for new servers; ``deprecated`` ones are older
    builds kept for the servers whose disks are backed by them."""

    AVAILABLE = "available"
    DEPRECATED = "deprecated"


class Image(Base):
    """One build of a guest image, placed in the data dir's ``images/<slug>-<version>/``."""

    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("slug", "version"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    slug: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(64))
    os: Mapped[str] = mapped_column(String(32))
    size_mb: Mapped[int] = mapped_column(Integer)
    min_disk_gb: Mapped[int] = mapped_column(Integer)
    min_memory_mb: Mapped[int] = mapped_column(Integer)
    cmdline: Mapped[str] = mapped_column(Text)
    status: Mapped[ImageStatus] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    @property
    def build_name(self) -> str:
        """The image's folder name below the data dir's ``images/``."""
        return f"{self.slug}-{self.version}"


class SshKey(Base):
    """An account's SSH public key, installed for ``root`` on servers created with it."""

    __tablename__ = "ssh_keys"
    __table_args__ = (
        UniqueConstraint("account_id", "fingerprint"),
        Index("ix_ssh_keys_account_id_id", "account_id", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    public_key: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Server(Base):
    """A VPS: one QEMU VM on the host. Deleted servers stay as rows (status ``deleted``)."""

    __tablename__ = "servers"
    __table_args__ = (
        Index("ix_servers_account_id_id", "account_id", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    status: Mapped[ServerStatus] = mapped_column(String(16))
    status_reason: Mapped[str | None] = mapped_column(Text)
    memory_mb: Mapped[int] = mapped_column(Integer)
    vcpus: Mapped[int] = mapped_column(Integer)
    disk_gb: Mapped[int] = mapped_column(Integer)
    uuid: Mapped[str] = mapped_column(String(36), unique=True, default=lambda: str(uuid4()))
    """Never reused: the guest's instance id (a new one means a first boot)."""
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="SET NULL"))
    """None for a blank server (an empty disk, no guest)."""
    ssh_port: Mapped[int | None] = mapped_column(Integer, unique=True)
    """Host port forwarded to the guest's port 22; freed (None) once the server is deleted."""
    authorized_keys: Mapped[str | None] = mapped_column(Text)
    """The public keys installed for root on first boot, one per line."""
    source_snapshot_id: Mapped[int | None] = mapped_column(Id)
    """The snapshot this server's disk was copied from (no foreign key: it may be deleted)."""
    source_backup_id: Mapped[int | None] = mapped_column(Id)
    """The backup this server's disk was restored from."""
    disks_made: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa_true())
    """Its host's agent recorded that its disks exist (its create made them, or found them
    made): a server copied from a snapshot or a backup whose disks never were is not started
    on its image's empty disk."""
    host_id: Mapped[int | None] = mapped_column(ForeignKey("hosts.id"), index=True)
    """Where it runs: chosen at create (``vpsd.services.hosts.place``); None only for a
    server made before hosts existed, until its host registers (it adopts them)."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    image: Mapped[Image | None] = relationship()
    host: Mapped[Host | None] = relationship()


class Snapshot(Base):
    """A point-in-time copy of all of a server's disks: an internal qcow2 snapshot."""

    __tablename__ = "snapshots"
    __table_args__ = (
        Index("ix_snapshots_server_id_status", "server_id", "status"),
        # An index, not a constraint: adding a constraint would make SQLite rebuild the table
        # (and lose its AUTOINCREMENT, see migration 0010).
        Index("uq_snapshots_server_id_slot", "server_id", "slot", unique=True),
        Index("ix_snapshots_expires_at", "expires_at"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    server_id: Mapped[int] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str | None] = mapped_column(Text)
    status: Mapped[SnapshotStatus] = mapped_column(String(16))
    status_reason: Mapped[str | None] = mapped_column(Text)
    size_mb: Mapped[int | None] = mapped_column(BigInteger)
    consistency: Mapped[str | None] = mapped_column(String(16))
    """``filesystem`` (taken frozen, or of a cleanly shut down guest) or ``crash``."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    memory: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa_false())
    """Taken with the running VM's memory and device state: restoring it resumes the guest."""
    pause_ms: Mapped[int | None] = mapped_column(Integer)
    """With memory: how long the guest was paused while its state was saved (at most)."""
    saved_state: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """With memory: what the state can only be resumed by (``hypervisor.base.SavedState``)."""

    tag: Mapped[str] = mapped_column(String(64), unique=True, default=lambda: new_snapshot_tag())
    """The internal snapshot's name on disk: never the user's name, and never made from the id,
    which another database (a restored backup, a new one) could hand out again."""
    type: Mapped[SnapshotType] = mapped_column(
        String(16), default=SnapshotType.MANUAL, server_default=SnapshotType.MANUAL.value
    )
    protected: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa_false())
    """Refuses deletion, expiry and rotation until the user removes it."""
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """When its host's agent deletes it (``vpsd.operations.snapshot_expiry``); never while
    protected."""
    slot: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """The snapshot policy's slot an automatic snapshot was taken for (one per slot)."""

    server: Mapped[Server] = relationship()


def new_snapshot_tag() -> str:
    """A qcow2 internal snapshot tag no database will ever hand out again."""
    return f"vpsd-snap-{uuid4().hex}"


class Backup(Base):
    """A copy of all of a server's disks in the backup repository (restic), apart from the
    host. It outlives its server: ``account_id`` keeps it the account's after a delete."""

    __tablename__ = "backups"
    __table_args__ = (
        Index("ix_backups_account_id_id", "account_id", "id"),
        Index("ix_backups_server_id_status", "server_id", "status"),
        UniqueConstraint("server_id", "slot", name="uq_backups_server_id_slot"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    server_id: Mapped[int] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str | None] = mapped_column(Text)
    type: Mapped[BackupType] = mapped_column(String(16))
    status: Mapped[BackupStatus] = mapped_column(String(16))
    status_reason: Mapped[str | None] = mapped_column(Text)
    size_mb: Mapped[int | None] = mapped_column(BigInteger)
    stored_mb: Mapped[int | None] = mapped_column(BigInteger)
    consistency: Mapped[str | None] = mapped_column(String(16))
    progress: Mapped[int | None] = mapped_column(Integer)
    """Percent of the disks' bytes stored so far, while in progress (100 once completed)."""
    slot: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """The policy's schedule slot an automatic backup was taken for (one backup per slot)."""
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="SET NULL"))
    """The server's image when it was backed up: a server made from the backup boots it."""
    disk_gb: Mapped[int] = mapped_column(Integer)
    disks: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    """Per disk: ``{"name": "disk0", "size_bytes": ..., "snapshot": <restic snapshot id>}``."""
    uuid: Mapped[str] = mapped_column(String(36), unique=True, default=lambda: str(uuid4()))
    """Names the backup in the repository (restic tags) and its temporary snapshot's tag."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    server: Mapped[Server] = relationship()

    @property
    def snapshot_tag(self) -> str:
        """The temporary internal snapshot the backup reads its point in time from."""
        return f"vpsd-backup-{self.uuid.replace('-', '')}"


class BackupStorageCheck(Base):
    """What a host's agent found when it last looked at its backup repository
    (``BackupStore.health``): API processes, wherever they run, show it on the backups of
    that host's servers, and ``/metrics`` as ``vpsd_backup_storage_up``."""

    __tablename__ = "backup_storage_checks"

    host_id: Mapped[int] = mapped_column(
        ForeignKey("hosts.id", ondelete="CASCADE"), primary_key=True
    )
    state: Mapped[str] = mapped_column(String(16))
    """A ``vpsd.backups.base.StorageState``: ok, new, missing or unavailable."""
    checked_at: Mapped[datetime] = mapped_column(UTCDateTime())
    since: Mapped[datetime] = mapped_column(UTCDateTime())
    """When it turned to ``state``."""


class BackupPolicy(Base):
    """When a server's automatic backups are taken, and how many are kept."""

    __tablename__ = "backup_policies"

    server_id: Mapped[int] = mapped_column(
        ForeignKey("servers.id", ondelete="CASCADE"), primary_key=True
    )
    enabled: Mapped[bool] = mapped_column(Boolean)
    frequency: Mapped[str] = mapped_column(String(16))
    hour: Mapped[int] = mapped_column(Integer)
    weekday: Mapped[int] = mapped_column(Integer)
    keep: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    """Slots before the policy's last change are not caught up on."""


class SnapshotPolicy(Base):
    """When a server's automatic snapshots are taken, and how many are kept."""

    __tablename__ = "snapshot_policies"

    server_id: Mapped[int] = mapped_column(
        ForeignKey("servers.id", ondelete="CASCADE"), primary_key=True
    )
    enabled: Mapped[bool] = mapped_column(Boolean)
    frequency: Mapped[str] = mapped_column(String(16))
    minute: Mapped[int] = mapped_column(Integer)
    hour: Mapped[int] = mapped_column(Integer)
    weekday: Mapped[int] = mapped_column(Integer)
    keep: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    """Slots before the policy's last change are not caught up on. Set by a change of the
    policy only: recording a skipped slot is no change."""
    skipped_slot: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """The latest slot that could not be taken (the server's snapshots full of manual or
    protected ones), until a later slot is taken; ``skipped_reason`` says why."""
    skipped_reason: Mapped[str | None] = mapped_column(Text)


class Installation(Base):
    """The one row naming this installation: the data dir holds the same id in a file, and
    vpsd refuses to start when they differ (see ``vpsd.services.installation``)."""

    __tablename__ = "installation"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    installation_id: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Operation(Base):
    """Durable slow work: written with the state change, executed after commit, resumable."""

    __tablename__ = "operations"
    __table_args__ = (
        Index("ix_operations_status_id", "status", "id"),
        Index("ix_operations_server_id_status", "server_id", "status"),
        Index("ix_operations_snapshot_id", "snapshot_id"),
        Index("ix_operations_backup_id", "backup_id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    kind: Mapped[OperationKind] = mapped_column(String(32))
    server_id: Mapped[int] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"))
    snapshot_id: Mapped[int | None] = mapped_column(Id)
    backup_id: Mapped[int | None] = mapped_column(Id)
    status: Mapped[OperationStatus] = mapped_column(String(16))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    claimed_by: Mapped[str | None] = mapped_column(String(300))
    """The lease: which agent runs it (``vpsd.operations.leases``); set while ``running``."""
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """When its agent last renewed the lease; an old one means the agent is gone."""
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """When it was last published to its host's queue (with a broker); None: not yet."""


PowerStateName = Literal["running", "stopped"]
"""The power state a restore returns a server to (stored in the operation's payload)."""


# Last, so that its table is in ``Base.metadata`` wherever the models are (Alembic's check).
from vpsd.db.changes import Change as Change  # noqa: E402
