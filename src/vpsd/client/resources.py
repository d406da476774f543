"""``client.servers``, ``.snapshots``, ``.ssh_keys`` and ``.images``: one method per endpoint.

Typed methods return the Pydantic models of ``vpsd.schemas``; each ``*_json`` twin returns the
API's decoded body unchanged (vpsctl prints those for ``--output json``).
"""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel

from vpsd.schemas import (
    ImageOut,
    Page,
    RestoreStarted,
    ServerOut,
    SnapshotCreated,
    SnapshotOut,
    SshKeyOut,
)

if TYPE_CHECKING:
    from vpsd.client.client import Client

JsonObject = dict[str, Any]
ItemT = TypeVar("ItemT", bound=BaseModel)
DEFAULT_CONSOLE_BYTES = 64 * 1024
"""What ``ServersApi.console`` asks for unless told (the API's default too; at most 1 MiB)."""


class _Collection(Generic[ItemT]):
    """The reads every collection shares: the whole list, one page, one object."""

    path: str
    """The collection's path below ``/api/v1/``, with its trailing slash."""
    model: type[ItemT]
    page_model: type[Page[ItemT]]

    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self) -> builtins.list[ItemT]:
        """Every object of the collection the account sees, newest first (all pages)."""
        return [self.model.model_validate(item) for item in self.list_json()["results"]]

    def list_json(self) -> JsonObject:
        """The list as the API shows it, every page's results merged into one object."""
        return self._client.list_all(self.path)

    def list_page(self, page: int = 1, page_size: int = 100) -> Page[ItemT]:
        """One page of the list, with ``count`` and the ``next``/``previous`` links."""
        body = self._client.request("GET", self.path, params={"page": page, "page_size": page_size})
        return self.page_model.model_validate(body)

    def get(self, object_id: int) -> ItemT:
        """One object; ``NotFoundError`` if it does not exist or is not the account's."""
        return self.model.model_validate(self.get_json(object_id))

    def get_json(self, object_id: int) -> JsonObject:
        """``get``'s body unchanged."""
        body: JsonObject = self._client.request("GET", f"{self.path}{object_id}/")
        return body


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
    ) -> ServerOut:
        """Create a server (status ``starting``); what is left out takes the service's
        defaults. ``image`` is a slug of ``client.images.list()`` or ``"blank"`` (an empty
        disk, no guest); ``ssh_keys`` are ids of the account's SSH keys (at most 10) to
        install for root."""
        return ServerOut.model_validate(
            self.create_json(name, disk_gb, memory_mb, vcpus, image, ssh_keys)
        )

    def create_json(
        self,
        name: str,
        disk_gb: int,
        memory_mb: int | None = None,
        vcpus: int | None = None,
        image: str | None = None,
        ssh_keys: builtins.list[int] | None = None,
    ) -> JsonObject:
        """``create``'s body unchanged."""
        payload: JsonObject = {"name": name, "disk_gb": disk_gb}
        if memory_mb is not None:
            payload["memory_mb"] = memory_mb
        if vcpus is not None:
            payload["vcpus"] = vcpus
        if image is not None:
            payload["image"] = image
        if ssh_keys is not None:
            payload["ssh_keys"] = builtins.list(ssh_keys)
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

    def delete(self, server_id: int) -> None:
        """Delete a server with its disks and snapshots (it is ``deleting``, then gone)."""
        self._client.request("DELETE", f"servers/{server_id}/")


class SnapshotsApi:
    """``/api/v1/snapshots/``."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self, server_id: int | None = None) -> builtins.list[SnapshotOut]:
        """The account's snapshots (only ``server_id``'s if given), newest first, all pages."""
        return [SnapshotOut.model_validate(s) for s in self.list_json(server_id)["results"]]

    def list_json(self, server_id: int | None = None) -> JsonObject:
        """The list as the API shows it, every page's results merged into one object."""
        params = {"server_id": server_id} if server_id is not None else {}
        return self._client.list_all("snapshots/", params)

    def list_page(
        self, server_id: int | None = None, page: int = 1, page_size: int = 100
    ) -> Page[SnapshotOut]:
        """One page of the list, with ``count`` and the ``next``/``previous`` links."""
        params: dict[str, int] = {"page": page, "page_size": page_size}
        if server_id is not None:
            params["server_id"] = server_id
        body = self._client.request("GET", "snapshots/", params=params)
        return Page[SnapshotOut].model_validate(body)

    def get(self, snapshot_id: int) -> SnapshotOut:
        """One snapshot; ``NotFoundError`` if it does not exist or is not the account's."""
        return SnapshotOut.model_validate(self.get_json(snapshot_id))

    def get_json(self, snapshot_id: int) -> JsonObject:
        """``get``'s body unchanged."""
        body: JsonObject = self._client.request("GET", f"snapshots/{snapshot_id}/")
        return body

    def create(self, server_id: int, name: str, description: str | None = None) -> SnapshotCreated:
        """Start a snapshot of the server (``in_progress``); see ``Client.wait_for_snapshot``."""
        return SnapshotCreated.model_validate(self.create_json(server_id, name, description))

    def create_json(self, server_id: int, name: str, description: str | None = None) -> JsonObject:
        """``create``'s body unchanged."""
        payload: JsonObject = {"server_id": server_id, "name": name}
        if description is not None:
            payload["description"] = description
        body: JsonObject = self._client.request("POST", "snapshots/", json=payload)
        return body

    def restore(self, snapshot_id: int) -> RestoreStarted:
        """Start overwriting the server's disks with the snapshot (server ``restoring``)."""
        return RestoreStarted.model_validate(self.restore_json(snapshot_id))

    def restore_json(self, snapshot_id: int) -> JsonObject:
        """``restore``'s body unchanged."""
        body: JsonObject = self._client.request("POST", f"snapshots/{snapshot_id}/restore/")
        return body

    def delete(self, snapshot_id: int) -> None:
        """Permanently delete a snapshot; it is gone from the API at once."""
        self._client.request("DELETE", f"snapshots/{snapshot_id}/")


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
