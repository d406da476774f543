"""The backup store contract: where backups live, apart from the hosts that run servers.

Like a hypervisor driver, a store knows nothing of the database: services hand it streams
of disk bytes and tags, and it hands back ids. Every method is safe to call again after a
crash (a repeated ``save`` makes a second copy; callers find and forget leftovers by tag).

A store fails closed: it makes a repository by itself only on first use, when it never had
one. Once it had one, a repository that is gone (an unmounted volume, a folder moved away)
makes every call raise ``StorageMissing``, never a new, empty repository in its place that
would take new backups while the old ones could not be restored; ``init`` makes a new one
when the operator says so (``vpsd backups init``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import IO, Protocol

from vpsd.core.disks import DiskSource
from vpsd.core.errors import HostError


class BackupStoreError(HostError):
    """The backup storage failed; ``str(error)`` is fit for the server's owner (full,
    unreachable...), ``detail`` holds the storage's own words for the operator's log."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(reason)
        self.detail = detail


MISSING = "the backup storage is missing (the operator's log has the details)"
READ_ONLY = "the backup storage is read-only (the operator's log has the details)"
NOT_PERMITTED = (
    "the backup storage refused access: permission denied (the operator's log has the details)"
)
FULL = "the backup storage is full (the operator's log has the details)"


class StorageMissing(BackupStoreError):
    """The repository this store used is gone; ``detail`` says where it was looked for."""

    def __init__(self, detail: str) -> None:
        super().__init__(MISSING, detail)


class StorageState(StrEnum):
    """What a look at the repository found (``BackupStore.health``)."""

    OK = "ok"
    """It opens."""
    NEW = "new"
    """There is none, and the store never had one: it is made on first use."""
    MISSING = "missing"
    """The store had one and it is gone: nothing works until it is back (or ``init``)."""
    UNAVAILABLE = "unavailable"
    """It cannot be used now: unreachable, refused, or its password is lost."""


@dataclass(frozen=True, slots=True)
class StorageHealth:
    """The repository's state, and the storage's own words on it for the operator's log."""

    state: StorageState
    detail: str | None = None

    @property
    def usable(self) -> bool:
        """Whether backups can be taken and restored now."""
        return self.state in (StorageState.OK, StorageState.NEW)


@dataclass(frozen=True, slots=True)
class SavedDisk:
    """One disk stored: the store's id for it, its length, and the new data it added.

    A disk saved from a ``DiskSource`` also says how it is laid out in the store
    (``layout``, which ``load_disk`` reads back), whether only what changed since its
    parent was read (``incremental``), and how many bytes of the disk were read.
    """

    snapshot: str
    size_bytes: int
    added_bytes: int
    layout: str = "raw"
    incremental: bool = False
    read_bytes: int | None = None


Tags = Mapping[str, str]
"""``key=value`` labels a stored disk carries (the backup's uuid, the disk's name...)."""
Progress = Callable[[int], None]
"""Called with the bytes of a stream stored so far."""


class BackupStore(Protocol):
    """A repository of disk images, deduplicated across backups."""

    def save(
        self, stream: IO[bytes], filename: str, tags: Tags, on_progress: Progress | None = None
    ) -> SavedDisk:
        """Store the stream's bytes (read to its end, then closed) as ``filename``; call
        ``on_progress`` now and then with the bytes stored so far."""
        ...

    def save_disk(
        self,
        source: DiskSource,
        tags: Tags,
        *,
        checkpoint: str,
        parent: str | None,
        on_progress: Progress | None = None,
    ) -> SavedDisk:
        """Store the disk ``source`` reads, at backup checkpoint ``checkpoint``.

        ``parent`` is the stored disk of the backup whose checkpoint ``source.changes``
        is relative to (``changes.since``): what did not change since then is taken from
        it without being read. The stored disk is whole on its own: forgetting the parent
        later takes nothing from it. Without a usable parent everything is read.
        """
        ...

    def load_disk(self, snapshot: str, disk: str, size_bytes: int, sink: IO[bytes]) -> None:
        """Write disk ``disk`` as ``save_disk`` stored it (layout ``chunks``) to ``sink``:
        ``size_bytes`` raw bytes; then close ``sink``."""
        ...

    def load(self, snapshot: str, filename: str, sink: IO[bytes]) -> None:
        """Write the stored bytes of ``filename`` in ``snapshot`` to ``sink``, then close it."""
        ...

    def find(self, tags: Tags) -> list[str]:
        """The ids of the stored disks carrying all of ``tags``."""
        ...

    def forget(self, snapshots: list[str]) -> None:
        """Remove these stored disks and reclaim the space no other one uses."""
        ...

    def unlock_stale(self) -> None:
        """Release locks left by a store client that died (e.g. with a killed vpsd)."""
        ...

    def absent(self, snapshots: list[str]) -> list[str]:
        """Those of ``snapshots`` the repository does not hold (they cannot be loaded)."""
        ...

    def health(self) -> StorageHealth:
        """Look at the repository now (never makes one); never raises."""
        ...

    def init(self) -> bool:
        """Make the repository if there is none (the operator's explicit wish, even if the
        store had one before); True when it made one, False when one was there."""
        ...
