"""``FakeBackupStore``: the ``BackupStore`` contract in memory, for fast unit tests."""

from __future__ import annotations

import itertools
import threading
import zlib
from typing import IO

from vpsd.backups.base import (
    READ_ONLY,
    BackupStoreError,
    Progress,
    SavedDisk,
    StorageHealth,
    StorageMissing,
    StorageState,
    Tags,
)


class FakeBackupStore:
    """Stored disks in a dict; ``fail_next`` makes the next call of a method fail.

    Like a real repository it is made on first use, and can ``vanish`` (a volume unmounted)
    and ``come_back``; ``read_only`` refuses writes.
    """

    def __init__(self) -> None:
        self.stored: dict[str, tuple[bytes, dict[str, str]]] = {}
        """Stored disk id -> (bytes, tags)."""
        self.read_only = False
        """Saves and forgets fail as on a read-only filesystem."""
        self.exists = False
        """Whether the repository is there (made on first use)."""
        self.used = False
        """Whether the store ever had a repository (a real one's password file exists)."""
        self._aside: dict[str, tuple[bytes, dict[str, str]]] | None = None
        self._ids = itertools.count(1)
        self._faults: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    # -- what tests do to it -----------------------------------------------------------------

    def fail_next(self, method_name: str, reason: str) -> None:
        """Make the next call of ``method_name`` raise ``BackupStoreError(reason)``."""
        with self._lock:
            self._faults.setdefault(method_name, []).append(reason)

    def vanish(self) -> None:
        """The repository goes away, kept aside (an unmounted volume): ``come_back`` returns it."""
        with self._lock:
            self._ready()
            self._aside, self.stored, self.exists = self.stored, {}, False

    def come_back(self) -> None:
        """The repository that vanished is back, as it was."""
        with self._lock:
            assert self._aside is not None, "nothing vanished"
            self.stored, self._aside, self.exists = self._aside, None, True

    def stored_bytes(self) -> int:
        """What the repository holds, as stored (each distinct content compressed, once)."""
        with self._lock:
            distinct = {data for data, _ in self.stored.values()}
        return sum(len(zlib.compress(data)) for data in distinct)

    # -- the contract ------------------------------------------------------------------------

    def save(
        self, stream: IO[bytes], filename: str, tags: Tags, on_progress: Progress | None = None
    ) -> SavedDisk:
        """Keep the bytes; "added" is their compressed length when no copy exists yet."""
        with stream:
            data = stream.read()
        self._fault("save")
        if on_progress is not None:
            on_progress(len(data))
        with self._lock:
            self._ready()
            self._writable()
            known = any(stored == data for stored, _ in self.stored.values())
            snapshot = f"{next(self._ids):08x}"
            self.stored[snapshot] = (data, {**tags, "filename": filename})
        return SavedDisk(snapshot, len(data), 0 if known else len(zlib.compress(data)))

    def load(self, snapshot: str, filename: str, sink: IO[bytes]) -> None:
        """Write the stored bytes to ``sink``."""
        self._fault("load")
        with self._lock:
            self._ready()
            if snapshot not in self.stored:
                raise BackupStoreError(f"stored disk {snapshot} not found")
            data = self.stored[snapshot][0]
        with sink:
            sink.write(data)

    def find(self, tags: Tags) -> list[str]:
        """Ids whose tags include all of ``tags``."""
        with self._lock:
            self._ready()
            return [
                snapshot
                for snapshot, (_, have) in self.stored.items()
                if all(have.get(key) == value for key, value in tags.items())
            ]

    def forget(self, snapshots: list[str]) -> None:
        """Drop them (unknown ids are ignored)."""
        if not snapshots:
            return
        self._fault("forget")
        with self._lock:
            self._ready()
            self._writable()
            for snapshot in snapshots:
                self.stored.pop(snapshot, None)

    def unlock_stale(self) -> None:
        """Nothing is ever locked in memory."""
        with self._lock:
            self._ready()

    def absent(self, snapshots: list[str]) -> list[str]:
        """The ids not stored."""
        self._fault("absent")
        with self._lock:
            self._ready()
            return [snapshot for snapshot in snapshots if snapshot not in self.stored]

    def health(self) -> StorageHealth:
        """``new`` before first use, ``missing`` after ``vanish``, else ``ok``."""
        with self._lock:
            if self.exists:
                return StorageHealth(StorageState.OK)
            if self.used:
                return StorageHealth(StorageState.MISSING, "fake: the repository vanished")
            return StorageHealth(StorageState.NEW)

    def init(self) -> bool:
        """A new, empty repository unless one is there."""
        with self._lock:
            if self.exists:
                return False
            self.exists = self.used = True
            return True

    # -- internals ---------------------------------------------------------------------------

    def _ready(self) -> None:
        """Made on first use; missing once it had one and it vanished (lock held)."""
        if self.exists:
            return
        if self.used:
            raise StorageMissing("fake: the repository vanished")
        self.exists = self.used = True

    def _writable(self) -> None:
        if self.read_only:
            raise BackupStoreError(READ_ONLY, "fake: read-only file system")

    def _fault(self, method_name: str) -> None:
        with self._lock:
            queued = self._faults.get(method_name)
            reason = queued.pop(0) if queued else None
        if reason is not None:
            raise BackupStoreError(reason)
