"""``FakeBackupStore``: the ``BackupStore`` contract in memory, for fast unit tests."""

from __future__ import annotations

import itertools
import threading
import time
import zlib
from typing import IO

from vpsd.backups import chunks
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
from vpsd.core.disks import DiskSource

CHUNK_BYTES = 4096
"""Chunk size of the fake's chunked disks (the real store's is 1 MiB)."""


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
        self.chunk_times: dict[str, chunks.ChunkTimes] = {}
        """Stored disk id -> the chunk times of a disk stored with ``save_disk``."""
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

    def save_disk(
        self,
        source: DiskSource,
        tags: Tags,
        *,
        checkpoint: str,
        parent: str | None,
        on_progress: Progress | None = None,
    ) -> SavedDisk:
        """As the real store: chunks unchanged since the parent are copied from it unread
        (``chunks.plan`` decides, with ``CHUNK_BYTES`` chunks); the rest is read."""
        self._fault("save_disk")
        with self._lock:
            self._ready()
            parent_times = self.chunk_times.get(parent) if parent else None
            parent_data = self.stored[parent][0] if parent in self.stored else b""
        plan = chunks.plan(source, parent_times, checkpoint, time.time_ns(), CHUNK_BYTES)
        size = source.changes.size_bytes
        data = bytearray(size)
        reused = parent_times.times if plan.incremental and parent_times else {}
        for offset, shown in plan.times.times.items():
            length = min(CHUNK_BYTES, size - offset)
            if reused.get(offset) == shown:
                data[offset : offset + length] = parent_data[offset : offset + length]
            else:
                source.read_into(offset, memoryview(data)[offset : offset + length])
        if on_progress is not None:
            on_progress(size)
        with self._lock:
            self._ready()
            self._writable()
            known = any(stored == data for stored, _ in self.stored.values())
            snapshot = f"{next(self._ids):08x}"
            self.stored[snapshot] = (bytes(data), {**tags, "checkpoint": checkpoint})
            self.chunk_times[snapshot] = plan.times
        added = 0 if known else len(zlib.compress(bytes(data)))
        return SavedDisk(
            snapshot,
            size,
            added,
            layout=chunks.FORMAT,
            incremental=plan.incremental,
            read_bytes=source.read_bytes,
        )

    def load_disk(self, snapshot: str, disk: str, size_bytes: int, sink: IO[bytes]) -> None:
        """Write the stored bytes to ``sink``."""
        self._fault("load_disk")
        with self._lock:
            self._ready()
            if snapshot not in self.chunk_times:
                raise BackupStoreError(f"stored disk {snapshot} not found")
            data = self.stored[snapshot][0]
        if len(data) != size_bytes:
            raise BackupStoreError(f"stored disk {snapshot} is not {size_bytes} bytes")
        with sink:
            sink.write(data)

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
                self.chunk_times.pop(snapshot, None)

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
