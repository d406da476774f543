"""The API's request and response shapes: the contract of ``API.md``, shared by server and SDK.

This module imports nothing from the database or the hypervisor, so clients can use it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictBool,
    StrictInt,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)

NAME_PATTERN = r"^[A-Za-z0-9_-]+$"
NAME_MAX_LENGTH = 64
DESCRIPTION_MAX_LENGTH = 1000
MAX_ID = 2**63 - 1
"""Ids are positive 64-bit integers; larger numbers cannot name anything."""


def format_time(value: datetime) -> str:
    """ISO 8601 in UTC, whole seconds, ``Z`` suffix: ``2025-01-15T18:30:00Z``."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


Timestamp = Annotated[
    datetime,
    PlainSerializer(format_time, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time", "examples": ["2025-01-15T18:30:00Z"]}),
]
Name = Annotated[
    str,
    StringConstraints(min_length=1, max_length=NAME_MAX_LENGTH, pattern=NAME_PATTERN),
    Field(
        description="1 to 64 characters: letters A-Z a-z, digits, hyphens and underscores",
        examples=["before-update-snapshot"],
    ),
]
ObjectId = Annotated[StrictInt, Field(ge=1, le=MAX_ID)]
ServerStatusName = Literal[
    "starting",
    "running",
    "paused",
    "stopping",
    "stopped",
    "rebooting",
    "restoring",
    "deleting",
    "error",
]
Consistency = Literal["filesystem", "crash"]
BLANK_IMAGE = "blank"
"""The image name of a server with an empty disk and no guest."""
MAX_SSH_KEYS_PER_SERVER = 10
MAX_PUBLIC_KEY_LENGTH = 8 * 1024
"""Far above the longest real key (16384-bit RSA: ~2.8 KB); far below the 64 KiB body limit."""
ImageSlug = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9.-]*$"),
    Field(
        description="an image's slug from GET /api/v1/images/, or 'blank'", examples=["debian-12"]
    ),
]
SnapshotStatusName = Literal["in_progress", "completed", "failed"]
BackupStatusName = Literal["in_progress", "completed", "failed"]
BackupTypeName = Literal["manual", "automatic"]
BackupFrequency = Literal["daily", "weekly"]
MAX_BACKUPS_KEPT = 100
"""The most automatic backups a policy may keep."""
SnapshotTypeName = Literal["manual", "automatic"]
SnapshotFrequency = Literal["hourly", "daily", "weekly"]
MAX_SNAPSHOTS_KEPT = 5
"""The most automatic snapshots a policy may keep: the seed page's limit per server."""


class RequestModel(BaseModel):
    """Request bodies: unknown fields and silent type coercion are refused (400)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ResponseModel(BaseModel):
    """Response bodies: every field is always sent, so the OpenAPI document lists every
    field as ``required`` (a field's default does not make it optional to a client)."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)


class ServerCreate(RequestModel):
    """Body of ``POST /api/v1/servers/``; omitted sizes take the service's defaults."""

    name: Name
    disk_gb: Annotated[StrictInt, Field(ge=1, description="size of the server's disk in GiB")]
    memory_mb: Annotated[StrictInt | None, Field(ge=64)] = None
    vcpus: Annotated[StrictInt | None, Field(ge=1)] = None
    image: ImageSlug | None = Field(
        default=None, description="the image to install; default: the service's default image"
    )
    ssh_keys: Annotated[
        list[ObjectId] | None,
        Field(
            max_length=MAX_SSH_KEYS_PER_SERVER,
            description="ids of your SSH keys to install for root (at most 10)",
        ),
    ] = None
    snapshot_id: ObjectId | None = Field(
        default=None,
        description="make the new server's disk a copy of this snapshot of one of your servers "
        "(the image is the snapshot's server's; disk_gb at least its disk's)",
    )
    backup_id: ObjectId | None = Field(
        default=None,
        description="make the new server's disk from this backup (restored from the backup "
        "storage; the image is the backed-up server's; disk_gb at least its disk's)",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ServerCreate:
        if self.snapshot_id is not None and self.backup_id is not None:
            raise ValueError("give snapshot_id or backup_id, not both")
        return self


class SshKeyCreate(RequestModel):
    """Body of ``POST /api/v1/ssh_keys/``."""

    name: Name
    public_key: Annotated[
        str,
        Field(
            min_length=1,
            max_length=MAX_PUBLIC_KEY_LENGTH,
            description="an OpenSSH public key line: ssh-ed25519, ecdsa-sha2-nistp256/384/521 "
            "or ssh-rsa of at least 2048 bits",
            examples=["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI... me@laptop"],
        ),
    ]


def _no_nul(text: str | None) -> str | None:
    # PostgreSQL's text cannot hold NUL: refused here in words, not a 500 at the INSERT.
    if text is not None and "\x00" in text:
        raise ValueError("must not contain NUL characters (\\u0000)")
    return text


TIME_FORMAT_HINT = "an ISO 8601 time with its zone, such as 2025-01-15T18:30:00Z"


def _moment(value: object) -> datetime:
    """A request's time: ISO 8601 text with a zone (or a zone-aware datetime, from Python
    callers), in UTC. Numbers are refused: a bare number could be seconds or milliseconds."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"must be {TIME_FORMAT_HINT}") from None
    if not isinstance(value, datetime):
        raise ValueError(f"must be {TIME_FORMAT_HINT}")
    if value.tzinfo is None:
        raise ValueError(f"needs a time zone (Z for UTC): {TIME_FORMAT_HINT}")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range: give a time between the years 1 and 9999") from None


Moment = Annotated[
    datetime,
    BeforeValidator(_moment),
    WithJsonSchema({"type": "string", "format": "date-time", "examples": ["2025-01-15T18:30:00Z"]}),
]
"""A time in a request body (its answer shows it as a ``Timestamp``)."""
Description = Annotated[
    str | None,
    Field(max_length=DESCRIPTION_MAX_LENGTH, description="free text, up to 1000 characters"),
    AfterValidator(_no_nul),
]
ExpiresAt = Annotated[
    Moment | None,
    Field(
        description="when the snapshot is deleted on its own (within a minute of it); null: "
        "never. Refused for a protected snapshot"
    ),
]


class RecoveryPointCreate(RequestModel):
    """What a snapshot's and a backup's create share."""

    server_id: ObjectId
    name: Name
    description: Description = None


class SnapshotCreate(RecoveryPointCreate):
    """Body of ``POST /api/v1/snapshots/``."""

    memory: StrictBool = Field(
        default=False,
        description="also save the running server's memory, so that a restore resumes the "
        "guest where it was (its processes, its tmpfs) instead of booting it; the guest is "
        "paused while the memory is written (about 0.4 s for 512 MiB)",
    )
    expires_at: ExpiresAt = None


class BackupCreate(RecoveryPointCreate):
    """Body of ``POST /api/v1/backups/``: the same fields as a snapshot's, but no memory
    and no expiry."""


def _not_null(value: object) -> object:
    if value is None:
        raise ValueError("must not be null: leave the field out to keep its value")
    return value


class SnapshotUpdate(RequestModel):
    """Body of ``PATCH /api/v1/snapshots/{id}/``: only the fields given change. ``null``
    clears ``description`` and ``expires_at``."""

    name: Annotated[Name | None, AfterValidator(_not_null)] = None
    description: Description = None
    protected: Annotated[
        StrictBool | None,
        AfterValidator(_not_null),
        Field(description="a protected snapshot is never deleted, expired or rotated"),
    ] = None
    expires_at: ExpiresAt = None


class BackupPolicy(RequestModel):
    """Body of ``PUT /api/v1/servers/{id}/backup-policy/``: when automatic backups are taken
    and how many are kept. Omitted fields take their defaults."""

    enabled: StrictBool = True
    frequency: BackupFrequency = "daily"
    hour: Annotated[StrictInt, Field(ge=0, le=23, description="the hour of the day, UTC")] = 3
    weekday: Annotated[
        StrictInt,
        Field(ge=0, le=6, description="weekly backups' day: 0 is Monday, 6 is Sunday"),
    ] = 6
    keep: Annotated[
        StrictInt,
        Field(
            ge=1,
            le=MAX_BACKUPS_KEPT,
            description="automatic backups kept; the oldest beyond this are deleted",
        ),
    ] = 7


class SnapshotSource(ResponseModel):
    """A server made from a snapshot."""

    snapshot_id: int


class BackupSource(ResponseModel):
    """A server made from a backup."""

    backup_id: int


class SshEndpoint(ResponseModel):
    """Where to reach a server's SSH daemon: ``ssh -p PORT root@HOST``."""

    host: str
    port: int


class ServerOut(ResponseModel):
    """A server as the API shows it."""

    id: int
    name: str
    status: ServerStatusName
    status_reason: str | None = Field(
        default=None, description="why the server is in its status, when it is not obvious"
    )
    memory_mb: int
    vcpus: int
    disk_gb: int
    image: str = Field(description="the image's slug, or 'blank'")
    ssh: SshEndpoint | None = Field(description="where to SSH in as root; null for a blank server")
    source: SnapshotSource | BackupSource | None = Field(
        default=None, description="the snapshot or backup the server was made from; else null"
    )
    created_at: Timestamp


class ImageOut(ResponseModel):
    """An image servers can be created from."""

    id: int
    slug: str
    name: str
    os: str
    size_mb: int = Field(description="the image's data in MiB")
    min_disk_gb: int
    min_memory_mb: int
    status: Literal["available"]


class SshKeyOut(ResponseModel):
    """An SSH public key of the account."""

    id: int
    name: str
    public_key: str
    fingerprint: str = Field(description="SHA256 fingerprint, as ssh-keygen -l shows it")
    created_at: Timestamp


class HostCapacityOut(ResponseModel):
    """What a host offers guests, before its overcommit ratios."""

    vcpus: int
    memory_mb: int = Field(description="its memory less the reserve for the host")
    disk_gb: int = Field(description="free space of its data dir's filesystem")


class HostOut(ResponseModel):
    """A hypervisor host, as admins see it."""

    id: int
    name: str
    state: Literal["up", "draining", "down"] = Field(
        description="up: takes new servers; draining: keeps its servers, takes no new ones; "
        "down: not heard from lately (its servers' operations wait for it)"
    )
    last_heartbeat_at: Timestamp
    servers: int = Field(description="its servers not deleted")
    capacity: HostCapacityOut


class ServerRef(ResponseModel):
    """The server a snapshot belongs to."""

    id: int
    name: str


class SnapshotOut(ResponseModel):
    """A snapshot as the page shows it, plus ``status_reason`` for failed snapshots."""

    id: int
    server: ServerRef
    name: str
    status: SnapshotStatusName
    size_mb: int | None
    created_at: Timestamp
    description: str | None
    status_reason: str | None = Field(
        default=None, description="why a snapshot failed; null otherwise"
    )
    consistency: Consistency | None = Field(
        default=None,
        description="filesystem: taken with the guest's filesystems frozen (or of a cleanly "
        "shut down guest); crash: as if power were cut; null while in progress",
    )
    memory: bool = Field(
        default=False,
        description="taken with the running server's memory: a restore resumes the guest",
    )
    pause_ms: int | None = Field(
        default=None,
        description="with memory, how long the guest was paused while it was saved (at "
        "most); null otherwise and while in progress",
    )
    type: SnapshotTypeName = Field(
        default="manual", description="manual, or automatic (taken by the snapshot policy)"
    )
    protected: bool = Field(
        default=False, description="refuses deletion, expiry and rotation until removed"
    )
    expires_at: Timestamp | None = Field(
        default=None, description="when it is deleted on its own; null: never"
    )


class SnapshotCreated(SnapshotOut):
    """Answer to a create: the snapshot in ``in_progress`` and what happens next."""

    message: str


class RestoreSnapshotRef(ResponseModel):
    """The snapshot being restored, as in the page's restore answer."""

    id: int
    name: str
    created_at: Timestamp


class RestoreServerRef(ResponseModel):
    """The server being restored, as in the page's restore answer."""

    id: int
    name: str
    status: ServerStatusName


class RestoreStarted(ResponseModel):
    """Answer to ``POST /api/v1/snapshots/{id}/restore/``."""

    status: Literal["success"] = "success"
    message: str
    snapshot: RestoreSnapshotRef
    server: RestoreServerRef


class BackupOut(ResponseModel):
    """A backup: a copy of a server's disks on the backup storage, apart from the host."""

    id: int
    server: ServerRef = Field(description="the backed-up server (its last name if deleted)")
    name: str
    type: BackupTypeName = Field(description="manual, or automatic (taken by the policy)")
    status: BackupStatusName
    size_mb: int | None = Field(description="the server's data the backup holds, in MiB")
    stored_mb: int | None = Field(
        description="new data this backup added to the backup storage, in MiB"
    )
    created_at: Timestamp
    description: str | None
    status_reason: str | None = Field(default=None, description="why a backup failed")
    consistency: Consistency | None = Field(
        default=None, description="as a snapshot's; null while in progress"
    )
    progress: int | None = Field(
        default=None,
        description="percent of the server's disks read into the backup so far (0-100); 100 "
        "once completed, null if it failed",
    )
    completed_at: Timestamp | None = None


class BackupCreated(BackupOut):
    """Answer to a create: the backup in ``in_progress`` and what happens next."""

    message: str


class RestoreBackupRef(ResponseModel):
    """The backup being restored."""

    id: int
    name: str
    created_at: Timestamp


class BackupRestoreStarted(ResponseModel):
    """Answer to ``POST /api/v1/backups/{id}/restore/``, shaped as a snapshot restore's."""

    status: Literal["success"] = "success"
    message: str
    backup: RestoreBackupRef
    server: RestoreServerRef


class BackupPolicyOut(ResponseModel):
    """A server's backup policy (``enabled: false`` until one is set)."""

    enabled: bool
    frequency: BackupFrequency
    hour: int
    weekday: int
    keep: int
    next_backup_at: Timestamp | None = Field(
        default=None, description="when the next automatic backup is due; null if disabled"
    )


COMMAND_MAX_LENGTH = 4096
ChangeStatusName = Literal["in_progress", "succeeded", "rolled_back", "failed"]


class HealthCheck(RequestModel):
    """How a change is judged after its command: exactly one of ``ssh`` (the server's SSH
    port answers with a banner, reached as a user would), ``tcp_port`` (something in the
    guest accepts connections on it) or ``command`` (it exits 0 in the guest)."""

    ssh: Literal[True] | None = None
    tcp_port: Annotated[StrictInt, Field(ge=1, le=65535)] | None = None
    command: (
        Annotated[str, Field(min_length=1, max_length=COMMAND_MAX_LENGTH), AfterValidator(_no_nul)]
        | None
    ) = None

    @model_validator(mode="after")
    def _exactly_one(self) -> HealthCheck:
        given = [name for name in ("ssh", "tcp_port", "command") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError('give exactly one of "ssh": true, "tcp_port" or "command"')
        return self


class ChangeCreate(RequestModel):
    """Body of ``POST /api/v1/changes/``: an update that rolls itself back."""

    server_id: ObjectId
    command: Annotated[
        str,
        Field(
            min_length=1,
            max_length=COMMAND_MAX_LENGTH,
            description="run with /bin/sh -c as root in the guest, through its agent",
        ),
        AfterValidator(_no_nul),
    ]
    health_check: HealthCheck = Field(default_factory=lambda: HealthCheck(ssh=True))
    timeout_seconds: Annotated[
        StrictInt, Field(ge=1, le=86400, description="the command is killed after this")
    ] = 900
    keep_snapshot_hours: Annotated[
        StrictInt,
        Field(ge=0, le=8760, description="how long the snapshot is kept after a success"),
    ] = 24


class ChangeOut(ResponseModel):
    """A change: where it is, the command's exit code and the last 64 KiB of its output, the
    health check's result, and the snapshot it can roll back to."""

    id: int
    server: ServerRef
    status: ChangeStatusName
    phase: Literal["snapshot", "command", "health", "rollback", "done"]
    status_reason: str | None
    command: str
    health_check: dict[str, object]
    timeout_seconds: int
    keep_snapshot_hours: int
    snapshot_id: int | None
    exit_code: int | None
    output: str
    output_length: int = Field(
        description="characters written in all; output holds the last 65536 of them"
    )
    health: dict[str, object] | None
    created_at: Timestamp
    finished_at: Timestamp | None


class SnapshotPolicy(RequestModel):
    """Body of ``PUT /api/v1/servers/{id}/snapshot-policy/``: when automatic snapshots are
    taken and how many are kept. Omitted fields take their defaults."""

    enabled: StrictBool = True
    frequency: SnapshotFrequency = "daily"
    minute: Annotated[StrictInt, Field(ge=0, le=59, description="the minute of the hour")] = 0
    hour: Annotated[
        StrictInt, Field(ge=0, le=23, description="daily and weekly snapshots' hour, UTC")
    ] = 3
    weekday: Annotated[
        StrictInt,
        Field(ge=0, le=6, description="weekly snapshots' day: 0 is Monday, 6 is Sunday"),
    ] = 6
    keep: Annotated[
        StrictInt,
        Field(
            ge=1,
            le=MAX_SNAPSHOTS_KEPT,
            description="automatic snapshots kept; the oldest beyond this are deleted",
        ),
    ] = 3


class SkippedSlot(ResponseModel):
    """A slot of the snapshot policy that was not taken, and why."""

    slot: Timestamp
    reason: str


class SnapshotPolicyOut(ResponseModel):
    """A server's snapshot policy (``enabled: false`` until one is set)."""

    enabled: bool
    frequency: SnapshotFrequency
    minute: int
    hour: int
    weekday: int
    keep: int
    next_run_at: Timestamp | None = Field(
        default=None, description="when the next automatic snapshot is due; null if disabled"
    )
    last_skipped: SkippedSlot | None = Field(
        default=None,
        description="the latest slot that could not be taken (the server's snapshots are all "
        "manual or protected ones) and why, until a later slot is taken; it is tried again "
        "at every look until then",
    )


class SnapshotRef(ResponseModel):
    """A snapshot, named."""

    id: int
    name: str


class ServerDeleted(ResponseModel):
    """Answer to ``DELETE /api/v1/servers/{id}/?force=true``: the deletion started, and the
    protection it removed first."""

    message: str
    unprotected_snapshots: list[SnapshotRef] = Field(
        description="the protected snapshots whose protection was removed (they are deleted "
        "with the server)"
    )


ItemT = TypeVar("ItemT", bound=BaseModel)


class Page(ResponseModel, Generic[ItemT]):
    """A list: ``count`` of all matches, this page's ``results`` newest first, and links."""

    count: int
    next: str | None = None
    previous: str | None = None
    results: list[ItemT]


class FieldError(ResponseModel):
    """One invalid parameter: where it is (``body.name``, ``query.server_id``) and why."""

    field: str
    message: str


class ErrorBody(ResponseModel):
    """Every error answer: ``detail`` for people; ``errors`` lists bad fields on a 400."""

    detail: str
    errors: list[FieldError] = Field(default_factory=list)
