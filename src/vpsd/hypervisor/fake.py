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

from vpsd.core.disks import DiskChanges
from vpsd.hypervisor.base import (
    BackupPoint,
    Consistency,
    DiskInfo,
    DriverError,
    ExecResult,
    IncompleteDisks,
    LivenessUnknown,
    PowerState,
    ResumeRefused,
    RunState,
    SavedState,
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
        "snapshot_resume",
        "snapshot_delete",
        "snapshot_tags",
        "guest_run",
        "guest_port_open",
        "disks",
        "snapshot_reader",
        "disk_writer",
        "finish_rewrite",
        "incomplete_disks",
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
    fallback: bytes | None = None
    """The disk before a ``disk_writer`` rewrite that ``finish_rewrite`` has not ended."""
    memory: bytes = b""
    """What the running guest holds in memory (lost when it stops)."""
    saved_states: dict[str, tuple[bytes, SavedState]] = field(default_factory=dict)
    """Snapshots taken with memory: what the guest held, and the stamp."""


@dataclass
class FakeCommand:
    """What a command run in a fake guest does (``FakeDriver.guest_commands``)."""

    exit_code: int | None = 0
    output: bytes = b""
    timed_out: bool = False
    disk: bytes | None = None
    """The disk's content after it ran (None: unchanged)."""
    ports: frozenset[int] | None = None
    """The guest's open TCP ports after it ran (None: unchanged)."""


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
        self.qemu_version = "fake-1"
        """The "QEMU" saved states are stamped with; change it to see a resume refused."""
        self.pause_seconds = 0.01
        """The pause a snapshot with memory reports."""
        self.guest_commands: dict[str, FakeCommand] = {}
        """What each command does when run in a guest; any other exits 0 and says nothing."""
        self.guest_ports: dict[int, frozenset[int]] = {}
        """The TCP ports open in each server's guest (none when not set)."""
        self.guest_runs: list[tuple[int, str]] = []
        """Every command run in a guest, as (server id, command)."""
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

    def write_memory(self, server_id: int, data: bytes) -> None:
        """Replace what the running guest holds in memory (its processes, its tmpfs)."""
        with self._lock:
            vm = self._vm(server_id)
            if vm.pid is None:
                raise DriverError(f"server {server_id} is not running")
            vm.memory = bytes(data)

    def read_memory(self, server_id: int) -> bytes:
        """What the running guest holds in memory (empty once it stopped)."""
        with self._lock:
            return self._vm(server_id).memory

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
            if vm.pid is None and vm.fallback is not None:
                raise IncompleteDisks
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
            vm.memory = b""
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
                vm.memory = b""

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

    def snapshot_create(
        self, server_id: int, tag: str, *, fresh: bool = False, memory: bool = False
    ) -> SnapshotResult:
        """Copy the disk under ``tag`` (unless it exists), with ``memory`` the guest's memory
        too; returns the captured length."""
        self._enter("snapshot_create", server_id)
        with self._lock:
            vm = self._vm(server_id)
            if memory and vm.pid is None:
                raise DriverError("a snapshot with memory needs a running server")
            stamp = SavedState(self.qemu_version, "fake", vm.spec.memory_mb, vm.spec.vcpus)
            if tag in vm.snapshots and (not memory or tag in vm.saved_states):
                saved = vm.saved_states[tag][1] if memory else None
                return SnapshotResult(len(vm.snapshots[tag]), "crash", saved)
            vm.snapshots[tag] = vm.disk
            has_guest = vm.spec.image is not None
            quiet = has_guest and (vm.pid is not None or vm.shut_down_cleanly)
            consistency: Consistency = "filesystem" if quiet else "crash"
            if not memory:
                return SnapshotResult(len(vm.disk), consistency)
            vm.saved_states[tag] = (vm.memory, stamp)
            captured = len(vm.disk) + len(vm.memory)
            return SnapshotResult(captured, consistency, stamp, self.pause_seconds)

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
            vm.fallback = None  # whole again: the snapshot's state
            vm.shut_down_cleanly = False  # the disk holds the snapshot's state now
            vm.records.clear()
            vm.reset_reason = "the server was restored from a snapshot"

    def snapshot_resume(self, spec: VmSpec, tag: str, saved: SavedState) -> None:
        """Put the disk and memory of ``tag`` back and run the VM (no boot: the console
        shows none); ``ResumeRefused`` when ``saved`` is not what this driver would save."""
        self._enter("snapshot_resume", spec.server_id)
        with self._lock:
            vm = self._vm(spec.server_id)
            if tag not in vm.saved_states:
                raise DriverError(f"snapshot {tag!r} holds no memory")
            memory, _ = vm.saved_states[tag]
            now = SavedState(self.qemu_version, "fake", spec.memory_mb, spec.vcpus)
            if saved != now:
                raise ResumeRefused(
                    f"this snapshot's memory cannot be resumed: it was saved as {saved}, "
                    f"this host would resume it as {now}"
                )
            vm.spec = spec
            vm.disk, vm.memory = vm.snapshots[tag], memory
            vm.fallback = None  # whole again: the snapshot's state
            vm.pid = next(self._pids)
            vm.run_state = RunState.RUNNING
            vm.shut_down_cleanly = False

    def snapshot_delete(self, server_id: int, tag: str) -> None:
        """Drop ``tag`` if present."""
        self._enter("snapshot_delete", server_id)
        with self._lock:
            vm = self._vms.get(server_id)
            if vm is not None:
                vm.snapshots.pop(tag, None)
                vm.saved_states.pop(tag, None)

    def guest_run(
        self,
        server_id: int,
        command: str,
        timeout: float,
        *,
        tail_bytes: int,
        on_output: Callable[[bytes], None] | None = None,
    ) -> ExecResult:
        """Do what ``guest_commands`` says ``command`` does, in the running guest."""
        self._enter("guest_run", server_id)
        with self._lock:
            vm = self._vm(server_id)
            if vm.pid is None or vm.spec.image is None:
                raise DriverError("the guest agent does not answer")
            self.guest_runs.append((server_id, command))
            does = self.guest_commands.get(command, FakeCommand())
            if does.disk is not None:
                vm.disk = does.disk
            if does.ports is not None:
                self.guest_ports[server_id] = does.ports
        if on_output is not None and does.output:
            on_output(does.output)
        return ExecResult(
            exit_code=None if does.timed_out else does.exit_code,
            timed_out=does.timed_out,
            interrupted=False,
            output=does.output[-tail_bytes:],
            output_bytes=len(does.output),
        )

    def guest_port_open(self, server_id: int, port: int, timeout: float) -> bool:
        """Whether ``guest_ports`` has ``port`` open in the running guest."""
        self._enter("guest_port_open", server_id)
        with self._lock:
            vm = self._vm(server_id)
            if vm.pid is None or vm.spec.image is None:
                raise DriverError("the guest agent does not answer")
            return port in self.guest_ports.get(server_id, frozenset())

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
        """Collect the bytes. An existing disk keeps its bytes to fall back to and takes
        what was written, whole or cut short (over its start), as the real one does; a new
        one appears only once the stream ended well."""
        self._enter("disk_writer", spec.server_id)
        with self._lock:
            vm = self._vms.get(spec.server_id)
            if vm is not None and vm.pid is not None:
                raise DriverError(f"server {spec.server_id} is running; stop it first")
            if vm is not None and vm.fallback is None:
                vm.fallback = vm.disk
        sink = _Sink()
        try:
            yield sink
        except BaseException:
            with self._lock:
                if vm is not None:
                    written = sink.data if sink.closed else sink.getvalue()
                    vm.disk = written + vm.disk[len(written) :]
                    vm.shut_down_cleanly = False
            raise
        with self._lock:
            vm = self._vms.setdefault(spec.server_id, _FakeVm(spec))
            vm.disk = sink.data if sink.closed else sink.getvalue()
            vm.shut_down_cleanly = False
            if vm.records:
                vm.records.clear()
                vm.reset_reason = "the server was restored from a backup"

    def finish_rewrite(self, server_id: int, *, keep: bool) -> None:
        """Drop the bytes kept to fall back to, after putting them back unless ``keep``."""
        self._enter("finish_rewrite", server_id)
        with self._lock:
            vm = self._vms.get(server_id)
            if vm is None or vm.fallback is None:
                return
            if vm.pid is not None:
                raise DriverError(f"server {server_id} is running; stop it first")
            if not keep:
                vm.disk = vm.fallback
            vm.fallback = None

    def incomplete_disks(self, server_id: int) -> list[str]:
        """``disk0`` while a rewrite of it is not finished."""
        self._enter("incomplete_disks", server_id)
        with self._lock:
            vm = self._vms.get(server_id)
            return ["disk0"] if vm is not None and vm.fallback is not None else []

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
