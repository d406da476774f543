"""``FakeBackupStore``: the ``BackupStore`` contract in memory, for fast unit tests."""

from __future__ import annotations

import itertools
import threading
import zlib
from typing import IO

from vpsd.backups.base import BackupStoreError, Progress, SavedDisk, Tags


class FakeBackupStore:
    """Stored disks in a dict; ``fail_next`` makes the next call of a method fail."""

    def __init__(self) -> None:
        self.stored: dict[str, tuple[bytes, dict[str, str]]] = {}
        """Stored disk id -> (bytes, tags)."""
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

    def unlock_stale(self) -> None:
        """Nothing is ever locked in memory."""

    def _fault(self, method_name: str) -> None:
        with self._lock:
            queued = self._faults.get(method_name)
            reason = queued.pop(0) if queued else None
        if reason is not None:
            raise BackupStoreError(reason)
