"""What an operation carries beyond its ids: one model per kind that needs more, stored as
JSON in ``Operation.payload`` and validated again when a handler loads it."""

from __future__ import annotations

from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from vpsd.db.models import OperationKind, PowerStateName


class Payload(BaseModel):
    """Base of every operation's payload: plain JSON values, immutable, nothing unknown."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class SnapshotSource(Payload):
    """A new server's disks are copied from an internal snapshot of another server's."""

    kind: Literal["snapshot"] = "snapshot"
    server_id: int
    tag: str


class BackupSource(Payload):
    """A new server's disks are restored from a backup (``Operation.backup_id``)."""

    kind: Literal["backup"] = "backup"
    backup_id: int


class CreateServer(Payload):
    """``server.create``: what the disks are made from (None: its image, or blank)."""

    source: Annotated[SnapshotSource | BackupSource, Field(discriminator="kind")] | None = None


class Restore(Payload):
    """``snapshot.restore`` and ``backup.restore``: the power state the server returns to."""

    power_state: PowerStateName


class ApplyChange(Payload):
    """``change.apply``: the change it applies (its phases are recorded on its row)."""

    change_id: int


class DeleteSnapshot(Payload):
    """``snapshot.delete``: why the snapshot goes (its user asked, it expired, or its policy
    rotated it out), so the operation's row says it."""

    reason: Literal["requested", "expired", "rotated"] = "requested"


class NoPayload(Payload):
    """The kinds that need nothing beyond their ids."""


PAYLOADS: dict[OperationKind, type[Payload]] = {
    OperationKind.SERVER_CREATE: CreateServer,
    OperationKind.SNAPSHOT_RESTORE: Restore,
    OperationKind.SNAPSHOT_DELETE: DeleteSnapshot,
    OperationKind.BACKUP_RESTORE: Restore,
    OperationKind.CHANGE_APPLY: ApplyChange,
}

P = TypeVar("P", bound=Payload)


def load(kind: OperationKind, stored: dict[str, object]) -> Payload:
    """The payload of an operation of ``kind`` from its stored JSON (validated)."""
    return PAYLOADS.get(kind, NoPayload).model_validate(stored)


def expect(payload: Payload, kind: type[P]) -> P:
    """``payload`` as ``kind``; TypeError when an operation carries another kind's."""
    if not isinstance(payload, kind):
        raise TypeError(f"expected a {kind.__name__} payload, got {type(payload).__name__}")
    return payload
