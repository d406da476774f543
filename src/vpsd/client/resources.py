"""``client.servers``, ``.snapshots``, ``.backups``, ``.ssh_keys`` and ``.images``: one method per
endpoint.

Typed methods return the Pydantic models of ``vpsd.schemas``; each ``*_json`` twin returns the
API's decoded body unchanged (vpsctl prints those for ``--output json``).
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping
from datetime import datetime
from enum import Enum
from typing import TYPE_CHECKING, Any, Final, Generic, Literal, TypeVar

from pydantic import BaseModel

from vpsd.client.errors import OperationFailed
from vpsd.client.waiting import poll
from vpsd.schemas import (
    BackupCreated,
    BackupFrequency,
    BackupOut,
    BackupPolicyOut,
    BackupRestoreStarted,
    ImageOut,
    Page,
    RestoreStarted,
    ServerDeleted,
    ServerOut,
    SnapshotCreated,
    SnapshotFrequency,
    SnapshotOut,
    SnapshotPolicyOut,
    SshKeyOut,
    format_time,
)

if TYPE_CHECKING:
    from vpsd.client.client import Client

JsonObject = dict[str, Any]
ItemT = TypeVar("ItemT", bound=BaseModel)
PointT = TypeVar("PointT", bound=SnapshotOut | BackupOut)
CreatedT = TypeVar("CreatedT", bound=BaseModel)
RestoredT = TypeVar("RestoredT", bound=BaseModel)
DEFAULT_CONSOLE_BYTES = 64 * 1024
"""What ``ServersApi.console`` asks for unless told (the API's default too; at most 1 MiB)."""


class _Unchanged(Enum):
    UNCHANGED = "unchanged"


UNCHANGED: Final = _Unchanged.UNCHANGED
"""An update's default for fields where ``None`` means "clear it": leave the field as it is."""
Unchanged = Literal[_Unchanged.UNCHANGED]


def _api_time(value: datetime) -> str:
    """A zone-aware time as the API takes it; a naive one is refused (whose clock is it?)."""
    if value.tzinfo is None:
        raise ValueError("give a zone-aware datetime, such as datetime.now(UTC) + timedelta(...)")
    return format_time(value)


class _Objects(Generic[ItemT]):
    """What every collection shares: one object, and the list fetched with query ``params``."""

    path: str
    """The collection's path below ``/api/v1/``, with its trailing slash."""
    model: type[ItemT]
    page_model: type[Page[ItemT]]

    def __init__(self, client: Client) -> None:
        self._client = client

    def get(self, object_id: int) -> ItemT:
        """One object; ``NotFoundError`` if it does not exist or is not the account's."""
        return self.model.model_validate(self.get_json(object_id))

    def get_json(self, object_id: int) -> JsonObject:
        """``get``'s body unchanged."""
        body: JsonObject = self._client.request("GET", f"{self.path}{object_id}/")
        return body

    def _list_json(self, params: Mapping[str, Any] | None = None) -> JsonObject:
        return self._client.list_all(self.path, params or None)

    def _list(self, params: Mapping[str, Any] | None = None) -> builtins.list[ItemT]:
        return [self.model.model_validate(item) for item in self._list_json(params)["results"]]

    def _list_page(
        self, page: int, page_size: int, params: Mapping[str, Any] | None = None
    ) -> Page[ItemT]:
        query = {**(params or {}), "page": page, "page_size": page_size}
        return self.page_model.model_validate(self._client.request("GET", self.path, params=query))


class _Collection(_Objects[ItemT]):
    """The reads of an unfiltered collection: the whole list, one page, one object."""

    def list(self) -> builtins.list[ItemT]:
        """Every object of the collection the account sees, newest first (all pages)."""
        return self._list()

    def list_json(self) -> JsonObject:
        """The list as the API shows it, every page's results merged into one object."""
        return self._list_json()

    def list_page(self, page: int = 1, page_size: int = 100) -> Page[ItemT]:
        """One page of the list, with ``count`` and the ``next``/``previous`` links."""
        return self._list_page(page, page_size)


class RecoveryPointsApi(_Objects[PointT], Generic[PointT, CreatedT, RestoredT]):
    """Snapshots and backups alike: copies of a server's disks, listed (all or one server's),
    created ``in_progress``, awaited until ``completed``, restored onto their server, deleted.
    """

    noun: str
    """``snapshot`` or ``backup``: how messages name one."""
    created_model: type[CreatedT]
    restored_model: type[RestoredT]

    def list(self, server_id: int | None = None) -> builtins.list[PointT]:
        """The account's objects (only ``server_id``'s if given), newest first, all pages."""
        return self._list(_server_filter(server_id))

    def list_json(self, server_id: int | None = None) -> JsonObject:
        """The list as the API shows it, every page's results merged into one object."""
        return self._list_json(_server_filter(server_id))

    def list_page(
        self, server_id: int | None = None, page: int = 1, page_size: int = 100
    ) -> Page[PointT]:
        """One page of the list, with ``count`` and the ``next``/``previous`` links."""
        return self._list_page(page, page_size, _server_filter(server_id))

    def create(self, server_id: int, name: str, description: str | None = None) -> CreatedT:
        """Start taking one of the server (``in_progress``); see ``wait_completed``."""
        return self.created_model.model_validate(self.create_json(server_id, name, description))

    def create_json(
        self, server_id: int, name: str, description: str | None = None, **fields: object
    ) -> JsonObject:
        """``create``'s body unchanged; ``fields`` are the kind's own (those not None)."""
        payload = _given(server_id=server_id, name=name, description=description, **fields)
        body: JsonObject = self._client.request("POST", self.path, json=payload)
        return body

    def restore(self, object_id: int) -> RestoredT:
        """Start overwriting its server's disks with it (server ``restoring``, then back in its
        former power state: ``Client.wait_for_restore``)."""
        return self.restored_model.model_validate(self.restore_json(object_id))

    def restore_json(self, object_id: int) -> JsonObject:
        """``restore``'s body unchanged."""
        body: JsonObject = self._client.request("POST", f"{self.path}{object_id}/restore/")
        return body

    def delete(self, object_id: int) -> None:
        """Permanently delete it; it is gone from the API at once."""
        self._client.request("DELETE", f"{self.path}{object_id}/")

    def wait_completed(
        self,
        object_id: int,
        *,
        timeout: float = 300.0,
        on_progress: Callable[[PointT], None] | None = None,
    ) -> PointT:
        """Poll until it is ``completed`` and return it.

        Raises ``OperationFailed`` (with ``status_reason``) if it ``failed``, ``WaitTimeout``
        after ``timeout`` seconds, ``NotFoundError`` if it was deleted meanwhile.
        """

        def settled(copy: PointT) -> bool:
            if copy.status == "failed":
                raise OperationFailed(
                    f"{self.noun} {copy.id} ({copy.name})", copy.status_reason, copy
                )
            return copy.status == "completed"

        return poll(
            lambda: self.get(object_id),
            settled,
            what=f"{self.noun} {object_id}",
            timeout=timeout,
            interval=self._client.poll_interval,
            on_progress=on_progress,
        )


def _server_filter(server_id: int | None) -> dict[str, int]:
    return {"server_id": server_id} if server_id is not None else {}


def _given(**fields: Any) -> JsonObject:
    """A request body of the fields given: ``None`` means left out (the API's default)."""
    return {key: value for key, value in fields.items() if value is not None}


class ServersApi(_Collection[ServerOut]):
    """``/api/v1/servers/``."""

    path = "servers/"
    model = ServerOut
    page_model = Page[ServerOut]

    def create(
        self,
        name: str,
        disk_gb: int,
        memory_mb: int | None = None,
        vcpus: int | None = None,
        image: str | None = None,
        ssh_keys: builtins.list[int] | None = None,
        *,
        snapshot_id: int | None = None,
        backup_id: int | None = None,
    ) -> ServerOut:
        """Create a server (status ``starting``); what is left out takes the service's
        defaults. ``image`` is a slug of ``client.images.list()`` or ``"blank"`` (an empty
        disk, no guest); ``ssh_keys`` are ids of the account's SSH keys (at most 10) to
        install for root. ``snapshot_id`` or ``backup_id`` (at most one) makes the new
        server's disk a copy of that snapshot or backup (``disk_gb`` at least its disk's)."""
        return ServerOut.model_validate(
            self.create_json(
                name,
                disk_gb,
                memory_mb,
                vcpus,
                image,
                ssh_keys,
                snapshot_id=snapshot_id,
                backup_id=backup_id,
            )
        )

    def create_json(
        self,
        name: str,
        disk_gb: int,
        memory_mb: int | None = None,
        vcpus: int | None = None,
        image: str | None = None,
        ssh_keys: builtins.list[int] | None = None,
        *,
        snapshot_id: int | None = None,
        backup_id: int | None = None,
    ) -> JsonObject:
        """``create``'s body unchanged."""
        payload = _given(
            name=name,
            disk_gb=disk_gb,
            memory_mb=memory_mb,
            vcpus=vcpus,
            image=image,
            ssh_keys=None if ssh_keys is None else builtins.list(ssh_keys),
            snapshot_id=snapshot_id,
            backup_id=backup_id,
        )
        body: JsonObject = self._client.request("POST", "servers/", json=payload)
        return body

    def start(self, server_id: int) -> ServerOut:
        """Boot a stopped server (or retry one in ``error``); it answers in ``starting``."""
        return ServerOut.model_validate(self.start_json(server_id))

    def start_json(self, server_id: int) -> JsonObject:
        """``start``'s body unchanged."""
        body: JsonObject = self._client.request("POST", f"servers/{server_id}/start/")
        return body

    def stop(self, server_id: int) -> ServerOut:
        """Power a running server down; it answers in ``stopping``."""
        return ServerOut.model_validate(self.stop_json(server_id))

    def stop_json(self, server_id: int) -> JsonObject:
        """``stop``'s body unchanged."""
        body: JsonObject = self._client.request("POST", f"servers/{server_id}/stop/")
        return body

    def reboot(self, server_id: int) -> ServerOut:
        """Reboot a running server (ACPI, forced after the service's timeout); it answers in
        ``rebooting``, then is ``running`` again (``Client.wait_for_server(id, "running")``)."""
        return ServerOut.model_validate(self.reboot_json(server_id))

    def reboot_json(self, server_id: int) -> JsonObject:
        """``reboot``'s body unchanged."""
        body: JsonObject = self._client.request("POST", f"servers/{server_id}/reboot/")
        return body

    def console(self, server_id: int, max_bytes: int = DEFAULT_CONSOLE_BYTES) -> str:
        """The last ``max_bytes`` (1 to 1 MiB) of the server's serial console as text: boot
        messages and the login prompt, to see why a guest does not come up."""
        return self._client.request_text(
            "GET", f"servers/{server_id}/console/", params={"bytes": max_bytes}
        )

    def delete(self, server_id: int, *, force: bool = False) -> ServerDeleted | None:
        """Delete a server with its disks and snapshots (it is ``deleting``, then gone).

        ``BadRequestError`` while one of its snapshots is protected, unless ``force``: then
        their protection is removed first, and the answer names those snapshots."""
        if not force:
            self._client.request("DELETE", f"servers/{server_id}/")
            return None
        body = self._client.request("DELETE", f"servers/{server_id}/", params={"force": "true"})
        return ServerDeleted.model_validate(body)

    def get_backup_policy(self, server_id: int) -> BackupPolicyOut:
        """The server's backup policy (``enabled`` false until one is set)."""
        return BackupPolicyOut.model_validate(self.get_backup_policy_json(server_id))

    def get_backup_policy_json(self, server_id: int) -> JsonObject:
        """``get_backup_policy``'s body unchanged."""
        body: JsonObject = self._client.request("GET", f"servers/{server_id}/backup-policy/")
        return body

    def set_backup_policy(
        self,
        server_id: int,
        *,
        enabled: bool | None = None,
        frequency: BackupFrequency | None = None,
        hour: int | None = None,
        weekday: int | None = None,
        keep: int | None = None,
    ) -> BackupPolicyOut:
        """Replace the server's backup policy (``PUT``): fields left out take the API's
        defaults, not their current values (``enabled`` true, ``daily`` at ``hour`` 3 UTC,
        ``weekday`` 6 = Sunday for weekly ones, ``keep`` 7 automatic backups)."""
        return BackupPolicyOut.model_validate(
            self.set_backup_policy_json(
                server_id,
                enabled=enabled,
                frequency=frequency,
                hour=hour,
                weekday=weekday,
                keep=keep,
            )
        )

    def set_backup_policy_json(
        self,
        server_id: int,
        *,
        enabled: bool | None = None,
        frequency: BackupFrequency | None = None,
        hour: int | None = None,
        weekday: int | None = None,
        keep: int | None = None,
    ) -> JsonObject:
        """``set_backup_policy``'s body unchanged."""
        payload = _given(
            enabled=enabled, frequency=frequency, hour=hour, weekday=weekday, keep=keep
        )
        body: JsonObject = self._client.request(
            "PUT", f"servers/{server_id}/backup-policy/", json=payload
        )
        return body

    def get_snapshot_policy(self, server_id: int) -> SnapshotPolicyOut:
        """The server's snapshot policy (``enabled`` false until one is set), with the latest
        slot it skipped and why (``last_skipped``)."""
        return SnapshotPolicyOut.model_validate(self.get_snapshot_policy_json(server_id))

    def get_snapshot_policy_json(self, server_id: int) -> JsonObject:
        """``get_snapshot_policy``'s body unchanged."""
        body: JsonObject = self._client.request("GET", f"servers/{server_id}/snapshot-policy/")
        return body

    def set_snapshot_policy(
        self,
        server_id: int,
        *,
        enabled: bool | None = None,
        frequency: SnapshotFrequency | None = None,
        minute: int | None = None,
        hour: int | None = None,
        weekday: int | None = None,
        keep: int | None = None,
    ) -> SnapshotPolicyOut:
        """Replace the server's snapshot policy (``PUT``): fields left out take the API's
        defaults, not their current values (``enabled`` true, ``daily`` at 03:00 UTC,
        ``weekday`` 6 = Sunday for weekly ones, ``keep`` 3 automatic snapshots)."""
        body = self.set_snapshot_policy_json(
            server_id, enabled=enabled, frequency=frequency, minute=minute, hour=hour,
            weekday=weekday, keep=keep,
        )  # fmt: skip
        return SnapshotPolicyOut.model_validate(body)

    def set_snapshot_policy_json(
        self,
        server_id: int,
        *,
        enabled: bool | None = None,
        frequency: SnapshotFrequency | None = None,
        minute: int | None = None,
        hour: int | None = None,
        weekday: int | None = None,
        keep: int | None = None,
    ) -> JsonObject:
        """``set_snapshot_policy``'s body unchanged."""
        payload = _given(
            enabled=enabled, frequency=frequency, minute=minute, hour=hour, weekday=weekday,
            keep=keep,
        )  # fmt: skip
        body: JsonObject = self._client.request(
            "PUT", f"servers/{server_id}/snapshot-policy/", json=payload
        )
        return body


class SnapshotsApi(RecoveryPointsApi[SnapshotOut, SnapshotCreated, RestoreStarted]):
    """``/api/v1/snapshots/``: point-in-time copies kept beside the server (5 per server,
    manual and automatic together), protected or expiring."""

    path = "snapshots/"
    noun = "snapshot"
    model = SnapshotOut
    page_model = Page[SnapshotOut]
    created_model = SnapshotCreated
    restored_model = RestoreStarted

    def create(
        self,
        server_id: int,
        name: str,
        description: str | None = None,
        *,
        memory: bool = False,
        expires_at: datetime | None = None,
    ) -> SnapshotCreated:
        """Start taking a snapshot of the server (``in_progress``); with ``memory`` (a running
        server), its memory too, so that a restore resumes the guest instead of booting it;
        with ``expires_at`` (a zone-aware time) it is deleted on its own within a minute of
        it. Without them the body is the seed page's."""
        body = self.create_json(
            server_id,
            name,
            description,
            memory=memory or None,
            expires_at=None if expires_at is None else _api_time(expires_at),
        )
        return SnapshotCreated.model_validate(body)

    def update(
        self,
        snapshot_id: int,
        *,
        name: str | None = None,
        description: str | Unchanged | None = UNCHANGED,
        protected: bool | None = None,
        expires_at: datetime | Unchanged | None = UNCHANGED,
    ) -> SnapshotOut:
        """Change only what is given (``PATCH``): a new ``name``; a ``description`` or an
        ``expires_at`` (zone-aware), ``None`` clearing either; ``protected`` true to refuse
        deletion, expiry and rotation, false to allow them again. ``BadRequestError`` (and
        nothing changed) for an expiry on a protected snapshot, or one in the past."""
        return SnapshotOut.model_validate(
            self.update_json(
                snapshot_id,
                name=name,
                description=description,
                protected=protected,
                expires_at=expires_at,
            )
        )

    def update_json(
        self,
        snapshot_id: int,
        *,
        name: str | None = None,
        description: str | Unchanged | None = UNCHANGED,
        protected: bool | None = None,
        expires_at: datetime | Unchanged | None = UNCHANGED,
    ) -> JsonObject:
        """``update``'s body unchanged."""
        payload = _given(name=name, protected=protected)
        if description is not UNCHANGED:
            payload["description"] = description
        if expires_at is not UNCHANGED:
            payload["expires_at"] = None if expires_at is None else _api_time(expires_at)
        body: JsonObject = self._client.request("PATCH", f"{self.path}{snapshot_id}/", json=payload)
        return body


class BackupsApi(RecoveryPointsApi[BackupOut, BackupCreated, BackupRestoreStarted]):
    """``/api/v1/backups/``: copies on the backup storage, apart from the host (10 manual per
    server, plus the automatic ones of its backup policy)."""

    path = "backups/"
    noun = "backup"
    model = BackupOut
    page_model = Page[BackupOut]
    created_model = BackupCreated
    restored_model = BackupRestoreStarted


class SshKeysApi(_Collection[SshKeyOut]):
    """``/api/v1/ssh_keys/``."""

    path = "ssh_keys/"
    model = SshKeyOut
    page_model = Page[SshKeyOut]

    def create(self, name: str, public_key: str) -> SshKeyOut:
        """Save an OpenSSH public key line; ``BadRequestError`` if it is not acceptable or
        already saved (the error names the saved key)."""
        return SshKeyOut.model_validate(self.create_json(name, public_key))

    def create_json(self, name: str, public_key: str) -> JsonObject:
        """``create``'s body unchanged."""
        payload: JsonObject = {"name": name, "public_key": public_key}
        body: JsonObject = self._client.request("POST", "ssh_keys/", json=payload)
        return body

    def delete(self, key_id: int) -> None:
        """Delete an SSH key; servers created with it keep it installed."""
        self._client.request("DELETE", f"ssh_keys/{key_id}/")


class ImagesApi(_Collection[ImageOut]):
    """``/api/v1/images/``: what servers can be created from (``blank`` is not listed)."""

    path = "images/"
    model = ImageOut
    page_model = Page[ImageOut]
