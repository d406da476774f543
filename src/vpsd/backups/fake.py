"""``FakeBackupStore``: the ``BackupStore`` contract in memory, for fast unit tests."""

from __future__ import annotations

import itertools
import threading
import time
import zlib
from typing import IO

from vpsd.backups import chunks
from vpsd.backups.base import BackupStoreError, Progress, SavedDisk, Tags
from vpsd.hypervisor.base import DiskSource

CHUNK_BYTES = 4096
"""Chunk size of the fake's chunked disks (the real store's is 1 MiB)."""


class FakeBackupStore:
    """Stored disks in a dict; ``fail_next`` makes the next call of a method fail."""

    def __init__(self) -> None:
        self.stored: dict[str, tuple[bytes, dict[str, str]]] = {}
        """Stored disk id -> (bytes, tags)."""
        self.chunk_times: dict[str, chunks.ChunkTimes] = {}
        """Stored disk id -> the chunk times of a disk stored with ``save_disk``."""
        self._ids = itertools.count(1)
        self._faults: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def fail_next(self, method_name: str, reason: str) -> None:
        """Make the next call of ``method_name`` raise ``BackupStoreError(reason)``."""
        with self._lock:
            self._faults.setdefault(method_name, []).append(reason)

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
            if snapshot not in self.stored:
                raise BackupStoreError(f"stored disk {snapshot} not found")
            data = self.stored[snapshot][0]
        with sink:
            sink.write(data)

    def find(self, tags: Tags) -> list[str]:
        """Ids whose tags include all of ``tags``."""
        with self._lock:
            return [
                snapshot
                for snapshot, (_, have) in self.stored.items()
                if all(have.get(key) == value for key, value in tags.items())
            ]

    def forget(self, snapshots: list[str]) -> None:
        """Drop them (unknown ids are ignored)."""
        self._fault("forget")
        with self._lock:
            for snapshot in snapshots:
                self.stored.pop(snapshot, None)
                self.chunk_times.pop(snapshot, None)

    def unlock_stale(self) -> None:
        """Nothing is ever locked in memory."""

    def _fault(self, method_name: str) -> None:
        with self._lock:
            queued = self._faults.get(method_name)
            reason = queued.pop(0) if queued else None
        if reason is not None:
            raise BackupStoreError(reason)
