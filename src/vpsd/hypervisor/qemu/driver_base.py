"""What every part of the QEMU driver shares: where a server's files are, and its lock."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vpsd.hypervisor.base import DriverError
from vpsd.hypervisor.qemu import img, process, qcow2

_DISK_NAME = re.compile(r"disk[0-9]{1,3}")


class DriverBase:
    """A host's servers below ``servers_dir``: paths, per-server locks, disks.

    Calls for one server are serialized by its lock (reentrant); different servers proceed
    in parallel.
    """

    def __init__(
        self,
        servers_dir: Path,
        accel: str = "auto",
        command_timeout: float = 600.0,
        quarantine_dir: Path | None = None,
    ):
        self.servers_dir = servers_dir.absolute()
        self.quarantine_dir = (quarantine_dir or servers_dir.parent / "quarantine").absolute()
        self.accel = accel
        self.command_timeout = command_timeout
        self._locks: dict[int, threading.RLock] = {}
        self._locks_guard = threading.Lock()

    def _paths(self, server_id: int) -> process.ServerPaths:
        return process.ServerPaths.of(self.servers_dir, server_id)

    @contextmanager
    def _lock(self, server_id: int, *, blocking: bool = True) -> Iterator[None]:
        """Hold the server's lock; without ``blocking``, raise DriverError if it is taken."""
        with self._locks_guard:
            lock = self._locks.setdefault(server_id, threading.RLock())
        if not lock.acquire(blocking=blocking):
            raise DriverError(f"another call on the VM of server {server_id} is under way")
        try:
            yield
        finally:
            lock.release()

    def _disk_path(self, server_id: int, disk: str) -> Path:
        if not _DISK_NAME.fullmatch(disk):
            raise DriverError(f"invalid disk name {disk!r}")
        return self._paths(server_id).folder / f"{disk}.qcow2"

    def _stopped_tags(self, disk: Path) -> list[str]:
        """The internal snapshot names of a disk no process is changing the table of."""
        try:
            return qcow2.snapshot_names(disk)
        except (qcow2.Unsupported, OSError, ValueError):
            return img.snapshot_names(disk, timeout=self.command_timeout)

    def _require_disks(self, server_id: int, paths: process.ServerPaths) -> list[Path]:
        disks = paths.disks()
        if not disks:
            raise DriverError(f"server {server_id} has no disks")
        return disks
