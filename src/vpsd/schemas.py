"""The API's request and response shapes: the contract of ``API.md``, shared by server and SDK.

This module imports nothing from the database or the hypervisor, so clients can use it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, StrictInt, StringConstraints

NAME_PATTERN = r"^[A-Za-z0-9_-]+$"
NAME_MAX_LENGTH = 64
DESCRIPTION_MAX_LENGTH = 1000
MAX_ID = 2**63 - 1
"""Ids are positive 64-bit integers; larger numbers cannot name anything."""


def format_time(value: datetime) -> str:
    """ISO 8601 in UTC, whole seconds, ``Z`` suffix: ``2025-01-15T18:30:00Z``."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


Timestamp = Annotated[datetime, PlainSerializer(format_time, return_type=str)]
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
    "starting", "running", "stopping", "stopped", "restoring", "deleting", "error"
]
SnapshotStatusName = Literal["in_progress", "completed", "failed"]


class RequestModel(BaseModel):
    """Request bodies: unknown fields and silent type coercion are refused (400)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ServerCreate(RequestModel):
    """Body of ``POST /api/v1/servers/``; omitted sizes take the service's defaults."""

    name: Name
    disk_gb: Annotated[StrictInt, Field(ge=1, description="size of the server's disk in GiB")]
    memory_mb: Annotated[StrictInt | None, Field(ge=64)] = None
    vcpus: Annotated[StrictInt | None, Field(ge=1)] = None


class SnapshotCreate(RequestModel):
    """Body of ``POST /api/v1/snapshots/``."""

    server_id: ObjectId
    name: Name
    description: Annotated[
        str | None,
        Field(max_length=DESCRIPTION_MAX_LENGTH, description="free text, up to 1000 characters"),
    ] = None


class ServerOut(BaseModel):
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
    created_at: Timestamp


class ServerRef(BaseModel):
    """The server a snapshot belongs to."""

    id: int
    name: str


class SnapshotOut(BaseModel):
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


class SnapshotCreated(SnapshotOut):
    """Answer to a create: the snapshot in ``in_progress`` and what happens next."""

    message: str


class RestoreSnapshotRef(BaseModel):
    """The snapshot being restored, as in the page's restore answer."""

    id: int
    name: str
    created_at: Timestamp


class RestoreServerRef(BaseModel):
    """The server being restored, as in the page's restore answer."""

    id: int
    name: str
    status: ServerStatusName


class RestoreStarted(BaseModel):
    """Answer to ``POST /api/v1/snapshots/{id}/restore/``."""

    status: Literal["success"] = "success"
    message: str
    snapshot: RestoreSnapshotRef
    server: RestoreServerRef


ItemT = TypeVar("ItemT", bound=BaseModel)


class Page(BaseModel, Generic[ItemT]):
    """A list: ``count`` of all matches, this page's ``results`` newest first, and links."""

    count: int
    next: str | None = None
    previous: str | None = None
    results: list[ItemT]


class FieldError(BaseModel):
    """One invalid parameter: where it is (``body.name``, ``query.server_id``) and why."""

    field: str
    message: str


class ErrorBody(BaseModel):
    """Every error answer: ``detail`` for people; ``errors`` lists bad fields on a 400."""

    detail: str
    errors: list[FieldError] = Field(default_factory=list)
