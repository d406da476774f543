"""``FakeDriver``: the ``Driver`` contract in memory, for fast unit tests.

Each server has one "disk" (bytes) and a dict of snapshot tag -> disk bytes, so tests can
write data, snapshot, overwrite, restore and read the old bytes back. Faults and delays can
be injected per method name.

``vpsd serve`` and ``vpsd agent`` with ``VPSD_DRIVER=fake`` keep its VMs in a file of the data
dir, saved after every driver call, so that, as QEMU's VMs do, they outlive a killed process;
``VPSD_FAKE_DELAYS=snapshot_create=2,...`` slows calls down (for tests of multi-process work).
"""

from __future__ import annotations

import io
import itertools
import pickle
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from vpsd.hypervisor.base import (
    BackupPoint,
    Consistency,
    DiskChanges,
    DiskInfo,
    DriverError,
    LivenessUnknown,
    PowerState,
    RunState,
    SnapshotResult,
    StopResult,
    VmInfo,
    VmSpec,
)

_METHODS = frozenset(
    {
        "create_disks",
        "start",
        "stop",
        "kill",
        "info",
        "run_state",
        "resume",
        "destroy",
        "snapshot_create",
        "snapshot_restore",
        "snapshot_delete",
        "snapshot_tags",
        "disks",
        "snapshot_reader",
        "disk_writer",
        "snapshot_clone",
        "backup_point_create",
        "backup_source",
        "backup_point_finish",
        "console_tail",
        "trim_console",
        "server_ids_on_disk",
        "quarantine",
        "recover",
    }
)


GRANULE = 4096
"""Bytes per bit of the fake change records (QEMU's bitmaps use the cluster size)."""


@dataclass
class _Record:
    """A fake change record: the granules written since its checkpoint."""

    size: int
    dirty: set[int] = field(default_factory=set)
    recording: bool = True
    consistent: bool = True


@dataclass
class _FakeVm:
    spec: VmSpec
    disk: bytes = b""
    snapshots: dict[str, bytes] = field(default_factory=dict)
    records: dict[str, _Record] = field(default_factory=dict)
    """Checkpoint -> change record, as QEMU's persistent bitmaps."""
    reset_reason: str | None = None
    pid: int | None = None
    console: bytes = b""
    shut_down_cleanly: bool = False
    run_state: RunState = RunState.RUNNING
    """What the CPUs of the running VM do (meaningless while it is off)."""


class _Sink(io.BytesIO):
    """A write stream that keeps its bytes after it is closed."""

    data = b""

    def close(self) -> None:
        if not self.closed:
            self.data = self.getvalue()
        super().close()


def _runs(granules: set[int], size: int) -> tuple[tuple[int, int], ...]:
    """Sorted granule indexes as merged ``(offset, length)`` runs within ``size``."""
    runs: list[tuple[int, int]] = []
    for index in sorted(granules):
        start = index * GRANULE
        if start >= size:
            break
        length = min(GRANULE, size - start)
        if runs and runs[-1][0] + runs[-1][1] == start:
            runs[-1] = (runs[-1][0], runs[-1][1] + length)
        else:
            runs.append((start, length))
    return tuple(runs)


class FakeDiskSource:
    """A ``DiskSource`` over bytes in memory."""

    def __init__(self, changes: DiskChanges, data: bytes) -> None:
        self.changes = changes
        self._data = data
        self._read = 0
        self._lock = threading.Lock()

    @property
    def read_bytes(self) -> int:
        """Bytes read so far."""
        return self._read

    def data_extents(self) -> list[tuple[int, int]]:
        """The granules that are not all zeros, as runs."""
        nonzero = {
            index
            for index in range(-(-len(self._data) // GRANULE))
            if self._data[index * GRANULE : (index + 1) * GRANULE].strip(b"\0")
        }
        return list(_runs(nonzero, len(self._data)))

    def read_into(self, offset: int, view: memoryview) -> None:
        """Copy the bytes; past the end is an error, as for a real disk."""
        if offset + len(view) > len(self._data):
            raise DriverError("read past the end of the disk")
        view[:] = self._data[offset : offset + len(view)]
        with self._lock:
            self._read += len(view)


class FakeDriver:
    """An in-memory, thread-safe driver. ``stop`` is graceful unless ``force_stops`` is set.

    Like the real one, a running VM with a guest (``spec.image``) is snapshotted
    ``filesystem``-consistent, as is a stopped one whose last stop was graceful; every boot
    writes a line to the console.
    """

    def __init__(
        self,
        *,
        force_stops: bool = False,
        state_file: Path | None = None,
        delays: dict[str, float] | None = None,
    ) -> None:
        self.force_stops = force_stops
        self.calls: list[tuple[str, int | None]] = []
        """Every driver call as (method, server_id), in order, for assertions."""
        self._vms: dict[int, _FakeVm] = {}
        self.quarantined: dict[int, _FakeVm] = {}
        """Servers ``quarantine`` moved aside, by id."""
        self._faults: dict[str, list[str]] = {}
        self._delays: dict[str, float] = {}
        self._pids = itertools.count(10_000)
        self._lock = threading.RLock()
        self._unknown: set[int] = set()
        self._disk_full = False
        for method_name, seconds in (delays or {}).items():
            self.delay(method_name, seconds)
        self._state_file = state_file
        if state_file is not None:
            self._load_and_save_after_every_call(state_file)

    # -- test hooks --------------------------------------------------------------------------

    def fail_next(self, method_name: str, reason: str) -> None:
        """Make the next call of ``method_name`` raise ``DriverError(reason)`` (queued)."""
        self._check_method(method_name)
        with self._lock:
            self._faults.setdefault(method_name, []).append(reason)

    def delay(self, method_name: str, seconds: float) -> None:
        """Make every later call of ``method_name`` sleep ``seconds`` first (0 to clear)."""
        self._check_method(method_name)
        with self._lock:
            self._delays[method_name] = seconds

    def write(self, server_id: int, data: bytes) -> None:
        """Replace the server's disk content, as a guest (or an admin) writing would; the
        granules that differ are marked in every recording change record."""
        with self._lock:
            vm = self._vm(server_id)
            old, vm.disk = vm.disk, bytes(data)
            written = {
                index
                for index in range(-(-max(len(old), len(data)) // GRANULE))
                if old[index * GRANULE : (index + 1) * GRANULE]
                != data[index * GRANULE : (index + 1) * GRANULE]
            }
            for record in vm.records.values():
                if record.recording:
                    record.dirty |= written

    def write_untracked(self, server_id: int, data: bytes) -> None:
        """Replace the disk content behind the change records' back (as a resize or a
        file edited outside QEMU would): only a chain check can catch it."""
        with self._lock:
            self._vm(server_id).disk = bytes(data)

    def spoil_change_records(self, server_id: int, how: str) -> None:
        """Damage the server's change records as the real world can: ``inconsistent`` (QEMU
        killed with the disk open), ``paused`` (disabled by hand) or ``removed``."""
        with self._lock:
            vm = self._vm(server_id)
            for record in vm.records.values():
                if how == "inconsistent":
                    record.consistent = False
                elif how == "paused":
                    record.recording = False
            if how == "removed":
                vm.records.clear()

    def change_records(self, server_id: int) -> set[str]:
        """The checkpoints the server's disk holds change records of."""
        with self._lock:
            return set(self._vm(server_id).records)

    def read(self, server_id: int) -> bytes:
        """The server's current disk content."""
        with self._lock:
            return self._vm(server_id).disk

    def write_console(self, server_id: int, data: bytes) -> None:
        """Append to the server's console, as its guest writing to the serial port would."""
        with self._lock:
            self._vm(server_id).console += data

    def spec(self, server_id: int) -> VmSpec:
        """The spec the server was last created or started with."""
        with self._lock:
            return self._vm(server_id).spec

    def exists(self, server_id: int) -> bool:
        """True while the server has disks (between ``create_disks`` and ``destroy``)."""
        with self._lock:
            return server_id in self._vms

    def set_liveness_unknown(self, server_id: int, unknown: bool = True) -> None:
        """Make liveness unreadable for the server (as /proc failing with EMFILE would):
        ``info``, ``start``, ``stop``, ``kill`` and ``destroy`` raise ``LivenessUnknown``."""
        with self._lock:
            if unknown:
                self._unknown.add(server_id)
            else:
                self._unknown.discard(server_id)

    def fill_disk(self, server_id: int) -> None:
        """The host's disk is full and the running VM's guest writes: QEMU pauses it
        (``DISK_FULL``) until ``free_disk`` and a ``resume``."""
        with self._lock:
            self._disk_full = True
            vm = self._vm(server_id)
            if vm.pid is not None:
                vm.run_state = RunState.DISK_FULL

    def free_disk(self) -> None:
        """Space is back on the host's disk (paused VMs stay paused until ``resume``)."""
        with self._lock:
            self._disk_full = False

    def pause(self, server_id: int) -> None:
        """Pause the running VM for a reason other than a full disk (a QMP ``stop``)."""
        with self._lock:
            vm = self._vm(server_id)
            if vm.pid is not None:
                vm.run_state = RunState.PAUSED

    # -- Driver ------------------------------------------------------------------------------

    def create_disks(self, spec: VmSpec) -> None:
        """Create an empty disk if missing (never overwrites)."""
        self._enter("create_disks", spec.server_id)
        with self._lock:
            self._vms.setdefault(spec.server_id, _FakeVm(spec))

    def start(self, spec: VmSpec) -> None:
        """Mark the VM running (creating its disk if needed)."""
        self._enter("start", spec.server_id)
        with self._lock:
            self._check_liveness(spec.server_id)
            vm = self._vms.setdefault(spec.server_id, _FakeVm(spec))
            vm.spec = spec
            if vm.pid is None:
                vm.pid = next(self._pids)
                vm.run_state = RunState.RUNNING
                vm.shut_down_cleanly = False
                vm.console += f"[fake] server {spec.server_id} booted (pid {vm.pid})\n".encode()

    def stop(self, server_id: int, timeout: float) -> StopResult:
        """Mark the VM stopped; ``forced`` follows ``force_stops`` (False if not running),
        and a paused VM is forced off at once, as the real driver does."""
        self._enter("stop", server_id)
        with self._lock:
            self._check_liveness(server_id)
            vm = self._vms.get(server_id)
            if vm is None or vm.pid is None:
                return StopResult(forced=False)
            vm.pid = None
            if vm.run_state is not RunState.RUNNING:
                vm.shut_down_cleanly = False
                return StopResult(forced=True, paused=True)
            vm.shut_down_cleanly = not self.force_stops and vm.spec.image is not None
            return StopResult(forced=self.force_stops)

    def kill(self, server_id: int) -> None:
        """Mark the VM stopped at once."""
        self._enter("kill", server_id)
        with self._lock:
            self._check_liveness(server_id)
            vm = self._vms.get(server_id)
            if vm is not None:
                vm.pid = None

    def info(self, server_id: int) -> VmInfo:
        """Running with a fake pid, or stopped."""
        self._enter("info", server_id)
        with self._lock:
            self._check_liveness(server_id)
            vm = self._vms.get(server_id)
            if vm is None or vm.pid is None:
                return VmInfo(PowerState.STOPPED, None)
            return VmInfo(PowerState.RUNNING, vm.pid)

    def run_state(self, server_id: int) -> RunState:
        """The running VM's run state, ``OFF`` when it is not running."""
        self._enter("run_state", server_id)
        with self._lock:
            self._check_liveness(server_id)
            vm = self._vms.get(server_id)
            return RunState.OFF if vm is None or vm.pid is None else vm.run_state

    def resume(self, server_id: int) -> RunState:
        """Continue a VM paused on a full disk once ``free_disk`` was called."""
        self._enter("resume", server_id)
        with self._lock:
            self._check_liveness(server_id)
            vm = self._vms.get(server_id)
            if vm is None or vm.pid is None:
                return RunState.OFF
            if vm.run_state is RunState.DISK_FULL and not self._disk_full:
                vm.run_state = RunState.RUNNING
            return vm.run_state

    def destroy(self, server_id: int) -> None:
        """Forget the server, its disk and snapshots."""
        self._enter("destroy", server_id)
        with self._lock:
            self._check_liveness(server_id)
            self._vms.pop(server_id, None)

    def snapshot_create(self, server_id: int, tag: str, *, fresh: bool = False) -> SnapshotResult:
        """Copy the disk under ``tag`` (unless it exists); returns the captured length."""
        self._enter("snapshot_create", server_id)
        with self._lock:
            vm = self._vm(server_id)
            if tag in vm.snapshots:
                return SnapshotResult(len(vm.snapshots[tag]), "crash")
            vm.snapshots[tag] = vm.disk
            has_guest = vm.spec.image is not None
            quiet = has_guest and (vm.pid is not None or vm.shut_down_cleanly)
            consistency: Consistency = "filesystem" if quiet else "crash"
            return SnapshotResult(len(vm.disk), consistency)

    def snapshot_restore(self, server_id: int, tag: str) -> None:
        """Put the bytes of ``tag`` back; raises if running or if ``tag`` is unknown."""
        self._enter("snapshot_restore", server_id)
        with self._lock:
            vm = self._vm(server_id)
            if vm.pid is not None:
                raise DriverError(f"server {server_id} is running; stop it before restoring")
            if tag not in vm.snapshots:
                raise DriverError(f"snapshot {tag!r} not found on disk0.qcow2")
            vm.disk = vm.snapshots[tag]
            vm.shut_down_cleanly = False  # the disk holds the snapshot's state now
            vm.records.clear()
            vm.reset_reason = "the server was restored from a snapshot"

    def snapshot_delete(self, server_id: int, tag: str) -> None:
        """Drop ``tag`` if present."""
        self._enter("snapshot_delete", server_id)
        with self._lock:
            vm = self._vms.get(server_id)
            if vm is not None:
                vm.snapshots.pop(tag, None)

    def snapshot_tags(self, server_id: int) -> set[str]:
        """The server's snapshot tags (empty when it has no disks)."""
        self._enter("snapshot_tags", server_id)
        with self._lock:
            vm = self._vms.get(server_id)
            return set(vm.snapshots) if vm is not None else set()

    def disks(self, server_id: int) -> list[DiskInfo]:
        """One disk, ``disk0``, as long as its bytes."""
        self._enter("disks", server_id)
        with self._lock:
            vm = self._vms.get(server_id)
            return [DiskInfo("disk0", len(vm.disk))] if vm is not None else []

    @contextmanager
    def snapshot_reader(self, server_id: int, tag: str, disk: str) -> Iterator[IO[bytes]]:
        """The bytes of ``tag``."""
        self._enter("snapshot_reader", server_id)
        with self._lock:
            snapshots = self._vm(server_id).snapshots
            if disk != "disk0" or tag not in snapshots:
                raise DriverError(f"snapshot {tag!r} not found on {disk}")
            data = snapshots[tag]
        yield io.BytesIO(data)

    @contextmanager
    def disk_writer(self, spec: VmSpec, disk: str, size_bytes: int) -> Iterator[IO[bytes]]:
        """Collect the bytes; they become the disk's once the stream ends well."""
        self._enter("disk_writer", spec.server_id)
        with self._lock:
            vm = self._vms.get(spec.server_id)
            if vm is not None and vm.pid is not None:
                raise DriverError(f"server {spec.server_id} is running; stop it first")
        sink = _Sink()
        yield sink
        with self._lock:
            vm = self._vms.setdefault(spec.server_id, _FakeVm(spec))
            vm.disk = sink.data if sink.closed else sink.getvalue()
            vm.shut_down_cleanly = False
            if vm.records:
                vm.records.clear()
                vm.reset_reason = "the server was restored from a backup"

    def snapshot_clone(self, source_server_id: int, tag: str, spec: VmSpec) -> None:
        """Give the new server the bytes of the source's ``tag`` (unless it has a disk)."""
        self._enter("snapshot_clone", spec.server_id)
        with self._lock:
            if spec.server_id in self._vms:
                return
            snapshots = self._vm(source_server_id).snapshots
            if tag not in snapshots:
                raise DriverError(f"snapshot {tag!r} not found on disk0.qcow2")
            self._vms[spec.server_id] = _FakeVm(spec, disk=snapshots[tag])

    def backup_point_create(
        self, server_id: int, tag: str, checkpoint: str, since: str | None
    ) -> BackupPoint:
        """Snapshot ``tag`` and a new change record ``checkpoint``; the granules written
        since ``since`` when its record holds (see ``Driver.backup_point_create``)."""
        self._enter("backup_point_create", server_id)
        with self._lock:
            vm = self._vm(server_id)
            size = len(vm.disk)
            base = vm.records.get(since) if since is not None else None
            why = None
            if since is not None:
                if base is None:
                    why = vm.reset_reason or "it has no record of changes since the previous backup"
                elif not base.consistent:
                    why = "its record of changes was left incomplete (the VM was killed)"
                elif not base.recording:
                    why = "its record of changes was paused"
                elif base.size != size:
                    why = "the disk was resized"
            if why is not None:
                base = None
            vm.records = {since: base} if base is not None and since is not None else {}
            vm.records[checkpoint] = _Record(size)
            vm.reset_reason = None
            vm.snapshots[tag] = vm.disk
            quiet = vm.spec.image is not None and (vm.pid is not None or vm.shut_down_cleanly)
            consistency: Consistency = "filesystem" if quiet else "crash"
            if base is None:
                changes = DiskChanges("disk0", size, chain_break=why)
            else:
                changes = DiskChanges("disk0", size, since, _runs(base.dirty, size))
            return BackupPoint(size, consistency, (changes,))

    @contextmanager
    def backup_source(
        self, server_id: int, tag: str, changes: DiskChanges
    ) -> Iterator[FakeDiskSource]:
        """The bytes of snapshot ``tag``, counting what is read."""
        self._enter("backup_source", server_id)
        with self._lock:
            snapshots = self._vm(server_id).snapshots
            if changes.name != "disk0" or tag not in snapshots:
                raise DriverError(f"snapshot {tag!r} not found on {changes.name}")
            data = snapshots[tag]
        yield FakeDiskSource(changes, data)

    def backup_point_finish(self, server_id: int, tag: str, checkpoint: str, *, kept: bool) -> None:
        """Drop snapshot ``tag``; keep only ``checkpoint``'s record, or drop it."""
        self._enter("backup_point_finish", server_id)
        with self._lock:
            vm = self._vms.get(server_id)
            if vm is None:
                return
            vm.snapshots.pop(tag, None)
            if kept:
                vm.records = {k: r for k, r in vm.records.items() if k == checkpoint}
            else:
                vm.records.pop(checkpoint, None)

    def console_tail(self, server_id: int, max_bytes: int) -> bytes:
        """The last ``max_bytes`` of the fake console (one line per boot)."""
        self._enter("console_tail", server_id)
        with self._lock:
            vm = self._vms.get(server_id)
            return vm.console[-max_bytes:] if vm is not None and max_bytes > 0 else b""

    def trim_console(self, server_id: int, max_bytes: int) -> bool:
        """Cut the fake console to its last half when longer than ``max_bytes``."""
        self._enter("trim_console", server_id)
        with self._lock:
            vm = self._vms.get(server_id)
            if vm is None or len(vm.console) <= max_bytes:
                return False
            vm.console = vm.console[-(max_bytes // 2) :]
            return True

    def server_ids_on_disk(self) -> set[int]:
        """Every server with a fake disk."""
        self._enter("server_ids_on_disk", None)
        with self._lock:
            return set(self._vms)

    def quarantine(self, server_id: int) -> Path | None:
        """Move the server's fake disk to ``quarantined`` (stopping it)."""
        self._enter("quarantine", server_id)
        with self._lock:
            vm = self._vms.pop(server_id, None)
            if vm is None:
                return None
            vm.pid = None
            self.quarantined[server_id] = vm
            return Path(f"/fake/quarantine/server-{server_id}")

    def recover(self, server_id: int) -> None:
        """Nothing to undo in memory."""
        self._enter("recover", server_id)

    # -- internals ---------------------------------------------------------------------------

    def _load_and_save_after_every_call(self, state_file: Path) -> None:
        if state_file.exists():
            with state_file.open("rb") as saved:
                # vpsd's own file, in its private data dir
                self._vms = pickle.load(saved)  # noqa: S301
        for method_name in _METHODS:
            setattr(self, method_name, self._saving(getattr(self, method_name), state_file))

    def _saving(self, method: Callable[..., object], state_file: Path) -> Callable[..., object]:
        def call(*args: object, **kwargs: object) -> object:
            try:
                return method(*args, **kwargs)
            finally:
                with self._lock:
                    temporary = state_file.with_suffix(".tmp")
                    temporary.write_bytes(pickle.dumps(self._vms))
                    temporary.replace(state_file)  # whole, even when killed mid-write

        return call

    def _check_method(self, method_name: str) -> None:
        if method_name not in _METHODS:
            raise ValueError(f"FakeDriver has no driver method {method_name!r}")

    def _enter(self, method_name: str, server_id: int | None) -> None:
        """Record the call, apply its delay (outside the lock), then any queued fault."""
        with self._lock:
            self.calls.append((method_name, server_id))
            delay = self._delays.get(method_name, 0.0)
        if delay > 0:
            time.sleep(delay)
        with self._lock:
            queued = self._faults.get(method_name)
            reason = queued.pop(0) if queued else None
        if reason is not None:
            raise DriverError(reason)

    def _check_liveness(self, server_id: int) -> None:
        if server_id in self._unknown:
            raise LivenessUnknown(f"fake: liveness of server {server_id} set unknown")

    def _vm(self, server_id: int) -> _FakeVm:
        vm = self._vms.get(server_id)
        if vm is None:
            raise DriverError(f"server {server_id} has no disks")
        return vm
