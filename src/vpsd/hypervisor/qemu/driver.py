"""``QemuDriver``: the ``Driver`` contract on real QEMU processes and qcow2 internal snapshots.

A running VM's disks are only ever changed by QEMU itself (over QMP); a stopped VM's disks
by ``qemu-img``. Calls for one server are serialized by a per-server lock; different servers
proceed in parallel (``driver_base``). Streams and copies of disks are in ``copies``.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Any

from vpsd.core.errors import HostError
from vpsd.hypervisor.base import (
    BootFailed,
    Consistency,
    DriverError,
    ExecResult,
    IncompleteDisks,
    LivenessUnknown,
    PowerState,
    RunState,
    SavedState,
    SnapshotResult,
    StopResult,
    VmInfo,
    VmSpec,
)
from vpsd.hypervisor.qemu import console, guest_exec, img, process, vmstate
from vpsd.hypervisor.qemu.backup_points import BackupPoints, drop_change_records
from vpsd.hypervisor.qemu.copies import FALLBACK_TAG, DiskCopies
from vpsd.hypervisor.qemu.qmp import QmpError, QmpSession
from vpsd.hypervisor.qemu.quiesce import quiesced, thaw_left_frozen

log = logging.getLogger(__name__)

GIB = 1024**3
MIB = 1024**2
QMP_TIMEOUT = 30.0
STATUS_TIMEOUT = 5.0
"""Seconds the monitor's ``run_state``/``resume`` wait for QEMU's answer."""
START_TIMEOUT = 60.0
KILL_TIMEOUT = 10.0
RESUME_MIN_FREE = 64 * MIB
"""Free bytes the disks' filesystem needs before a VM paused on a full disk is continued:
less, and the guest's retried write would pause it again at once."""


class QemuDriver(DiskCopies, BackupPoints):
    """Runs each server as a daemonized qemu-system-x86_64 below ``servers_dir``."""

    # -- paths -------------------------------------------------------------------------------

    def qmp_socket_path(self, server_id: int) -> Path:
        """The QMP unix socket of the server's VM (present while it runs)."""
        return self._paths(server_id).qmp_socket

    def disk_paths(self, server_id: int) -> list[Path]:
        """The server's existing qcow2 disks, in node-name order (disk0, disk1, ...)."""
        return self._paths(server_id).disks()

    # -- lifecycle ---------------------------------------------------------------------------

    def create_disks(self, spec: VmSpec) -> None:
        """Create ``disk0.qcow2`` of ``spec.disk_gb`` GiB if missing (never overwrites).

        From an image, the disk is a copy-on-write overlay of the image's immutable base
        disk, made in milliseconds whatever its size; the guest grows its filesystem into
        the rest on first boot.
        """
        with self._lock(spec.server_id):
            paths = self._paths(spec.server_id)
            paths.folder.mkdir(parents=True, exist_ok=True)
            if paths.disk(0).exists():
                return
            backing = spec.image.disk if spec.image is not None else None
            img.create(
                paths.disk(0), spec.disk_gb * GIB, backing=backing, timeout=self.command_timeout
            )

    def start(self, spec: VmSpec) -> None:
        """Boot the VM unless it runs; return once QMP ``query-status`` says running.

        Raises ``LivenessUnknown`` when it cannot tell whether the VM runs (it never boots a
        second QEMU on a guess), and ``BootFailed`` with QEMU's own words (host memory, KVM
        limits) when QEMU cannot start it: they are for the operator, not the tenant.
        """
        with self._lock(spec.server_id):
            paths = self._paths(spec.server_id)
            try:
                if process.alive_pid(paths, spec.server_id) is None:
                    if self.incomplete_disks(spec.server_id):
                        raise IncompleteDisks
                    self.create_disks(spec)
                    accel = process.resolve_accel(self.accel)
                    process.launch(spec, paths, paths.disks(), accel, timeout=START_TIMEOUT)
                self._wait_running(spec.server_id, paths)
            except (LivenessUnknown, BootFailed, IncompleteDisks):
                raise
            except HostError as exc:
                raise BootFailed(str(exc)) from exc

    def stop(self, server_id: int, timeout: float) -> StopResult:
        """ACPI power-down; after ``timeout`` seconds (or if refused) force the VM off.

        A VM without a guest OS ignores the power button, so ``forced=True`` is normal here.
        """
        with self._lock(server_id):
            paths = self._paths(server_id)
            pid = process.alive_pid(paths, server_id)
            if pid is None:
                return StopResult(forced=False)
            paused = False
            try:
                with QmpSession(paths.qmp_socket, timeout=QMP_TIMEOUT) as qmp:
                    paused = _run_state(qmp, server_id) in (RunState.DISK_FULL, RunState.PAUSED)
                    if not paused:
                        qmp.execute("system_powerdown")
            except QmpError:
                pass  # the monitor is wedged or gone: the forced path below handles both
            if paused:
                # Paused CPUs cannot answer the power button: no point in waiting.
                self._kill(server_id, paths, pid)
                return StopResult(forced=True, paused=True)
            if process.wait_gone(paths, server_id, pid, timeout):
                # The guest shut down by itself: its filesystems are clean (see snapshots).
                paths.clean_shutdown_marker.touch()
                return StopResult(forced=False)
            self._kill(server_id, paths, pid)
            return StopResult(forced=True)

    def kill(self, server_id: int) -> None:
        """Stop the VM at once (QMP ``quit``, SIGKILL if needed); wait until it is gone."""
        with self._lock(server_id):
            paths = self._paths(server_id)
            pid = process.alive_pid(paths, server_id)
            if pid is not None:
                self._kill(server_id, paths, pid)

    def info(self, server_id: int) -> VmInfo:
        """Running with its pid if our QEMU process is alive, else stopped; raises
        ``LivenessUnknown`` when the pidfile or ``/proc`` cannot be read."""
        paths = self._paths(server_id)
        pid = process.alive_pid(paths, server_id)
        if pid is not None:
            return VmInfo(PowerState.RUNNING, pid)
        stale = process.read_pidfile(paths)
        reason = f"stale pidfile (process {stale} is not this VM)" if stale is not None else None
        return VmInfo(PowerState.STOPPED, None, reason)

    def run_state(self, server_id: int) -> RunState:
        """QMP ``query-status`` (and ``query-block`` for an I/O error) of the running VM.

        Raises ``DriverError`` when another call on this VM holds it (the monitor asks
        again later) or QEMU does not answer within ``STATUS_TIMEOUT``.
        """
        with self._lock(server_id, blocking=False):
            paths = self._paths(server_id)
            if process.alive_pid(paths, server_id) is None:
                return RunState.OFF
            with QmpSession(paths.qmp_socket, timeout=STATUS_TIMEOUT) as qmp:
                return _run_state(qmp, server_id)

    def resume(self, server_id: int) -> RunState:
        """QMP ``cont`` for a VM paused on a full disk, once its folder's filesystem has
        ``RESUME_MIN_FREE`` bytes free; the state afterwards (another pause stays)."""
        with self._lock(server_id, blocking=False):
            paths = self._paths(server_id)
            if process.alive_pid(paths, server_id) is None:
                return RunState.OFF
            with QmpSession(paths.qmp_socket, timeout=STATUS_TIMEOUT) as qmp:
                state = _run_state(qmp, server_id)
                if state is not RunState.DISK_FULL:
                    return state
                try:
                    free = _free_bytes(paths.folder)
                except OSError as exc:
                    raise DriverError(f"cannot read the free space of {paths.folder}") from exc
                if free < RESUME_MIN_FREE:
                    log.info("server %s: paused on a full disk; %d bytes free", server_id, free)
                    return state
                log.warning("server %s: %d bytes free again: continuing the VM", server_id, free)
                qmp.execute("cont")
                return _run_state(qmp, server_id)

    def destroy(self, server_id: int) -> None:
        """Kill the VM and delete the server's folder (disks included)."""
        with self._lock(server_id):
            self.kill(server_id)
            folder = self._paths(server_id).folder
            if folder.exists():
                shutil.rmtree(folder)

    # -- snapshots ---------------------------------------------------------------------------

    def snapshot_create(
        self, server_id: int, tag: str, *, fresh: bool = False, memory: bool = False
    ) -> SnapshotResult:
        """Snapshot all disks as ``tag`` (one QMP transaction if running, qemu-img if not).

        While the VM runs and its guest agent answers, the transaction happens between
        ``guest-fsfreeze-freeze`` and ``-thaw`` (``filesystem`` consistency); otherwise the
        snapshot is ``crash``-consistent. A stopped VM's snapshot is ``filesystem`` when its
        guest shut down by itself, ``crash`` when it was forced off or never had a guest.

        Idempotent: when every disk already has ``tag`` nothing is taken (and the result
        says ``crash``: how it was taken is unknown). A failure leaves no disk with ``tag``
        (stale partial tags from a crash are replaced). ``fresh`` says no earlier attempt can
        have taken ``tag`` (tags are never reused): the look for a leftover is skipped.
        ``captured_bytes`` is the allocated guest data, summed over the disks (with memory,
        plus the saved state's size).

        With ``memory`` the running VM's state is saved too (``vmstate.save``); a retry that
        finds ``tag`` taken keeps it only when it holds that state, and then reports no pause.
        """
        img.check_tag(tag)
        with self._lock(server_id):
            paths = self._paths(server_id)
            disks = self._require_disks(server_id, paths)
            running = process.alive_pid(paths, server_id) is not None
            if memory and not running:
                raise DriverError("a snapshot with memory needs a running server")
            tags = [[] for _ in disks] if fresh else self._tags_per_disk(paths, disks, running)
            consistency: Consistency = "crash"
            saved = paused = None
            taken = all(tag in names for names in tags)
            if taken and memory and not self._state_size(paths, tag):
                taken = False  # a disk-only snapshot under this tag: not what was asked
            if not taken:
                # Some disks only: a leftover of an interrupted attempt; start over cleanly.
                self._delete(paths, disks, tag, tags, running)
                if memory:
                    saved, paused, frozen = vmstate.save(paths, disks, tag, self.command_timeout)
                    consistency = "filesystem" if frozen else "crash"
                elif running:
                    consistency = self._create_running(paths, disks, tag)
                else:
                    self._create_stopped(disks, tag)
                    if paths.clean_shutdown_marker.exists():
                        consistency = "filesystem"
            elif memory:
                saved = self._running_state(paths)
            captured = sum(
                img.captured_bytes(d, tag, force_share=running, timeout=self.command_timeout)
                for d in disks
            )
            if memory:
                captured += self._state_size(paths, tag)
            return SnapshotResult(captured, consistency, saved, paused)

    def snapshot_restore(self, server_id: int, tag: str) -> None:
        """Revert every disk to ``tag``; the VM must be stopped and every disk have ``tag``."""
        img.check_tag(tag)
        with self._lock(server_id):
            paths = self._paths(server_id)
            if process.alive_pid(paths, server_id) is not None:
                raise DriverError(f"server {server_id} is running; stop it before restoring")
            disks = self._require_disks(server_id, paths)
            # Read in-process: only a snapshot's own operation (this one) changes its tag.
            tags = [self._stopped_tags(disk) for disk in disks]
            missing = [d.name for d, names in zip(disks, tags, strict=True) if tag not in names]
            if missing:
                raise DriverError(f"snapshot {tag!r} not found on {', '.join(missing)}")
            # The disks now hold the snapshot's state, whose consistency is not known here.
            paths.clean_shutdown_marker.unlink(missing_ok=True)
            # A revert is no guest write: no change record would see it.
            drop_change_records(
                paths.folder,
                disks,
                "the server was restored from a snapshot",
                timeout=self.command_timeout,
            )
            for disk in disks:
                # Not atomic across disks, but idempotent: a retry finishes the job.
                img.snapshot_apply(disk, tag, timeout=self.command_timeout)
            # Whole again, at the snapshot: what an unfinished rewrite kept is not needed.
            for disk, names in zip(disks, tags, strict=True):
                if FALLBACK_TAG in names:
                    img.snapshot_delete(disk, FALLBACK_TAG, timeout=self.command_timeout)

    def snapshot_resume(self, spec: VmSpec, tag: str, saved: SavedState) -> None:
        """See ``Driver.snapshot_resume``: checks first, then kill, ``-loadvm``, clock, thaw."""
        img.check_tag(tag)
        with self._lock(spec.server_id):
            paths = self._paths(spec.server_id)
            self._require_disks(spec.server_id, paths)
            running = process.alive_pid(paths, spec.server_id) is not None
            vmstate.check_resumable(saved, spec, running=running, timeout=self.command_timeout)
            if running:
                self.kill(spec.server_id)
            # The disks now hold the snapshot's state, whose consistency is not known here.
            paths.clean_shutdown_marker.unlink(missing_ok=True)
            # A revert is no guest write: no change record would see it (and QEMU reverts no
            # disk that has an enabled bitmap).
            drop_change_records(
                paths.folder,
                paths.disks(),
                "the server was restored from a snapshot",
                timeout=self.command_timeout,
            )
            try:
                vmstate.resume(spec, paths, tag, process.resolve_accel(self.accel), START_TIMEOUT)
                self._wait_running(spec.server_id, paths)
            except (LivenessUnknown, BootFailed):
                raise
            except HostError as exc:
                raise BootFailed(str(exc)) from exc
            # Whole again, at the snapshot: what an unfinished rewrite kept is not needed.
            disks = paths.disks()
            self._delete(paths, disks, FALLBACK_TAG, self._tags_per_disk(paths, disks, True), True)

    def snapshot_delete(self, server_id: int, tag: str) -> None:
        """Delete ``tag`` from every disk that has it; a missing tag is not an error."""
        img.check_tag(tag)
        with self._lock(server_id):
            paths = self._paths(server_id)
            disks = paths.disks()
            if not disks:
                return
            running = process.alive_pid(paths, server_id) is not None
            self._delete(paths, disks, tag, self._tags_per_disk(paths, disks, running), running)

    def guest_run(
        self,
        server_id: int,
        command: str,
        timeout: float,
        *,
        tail_bytes: int,
        on_output: Callable[[bytes], None] | None = None,
    ) -> ExecResult:
        """See ``Driver.guest_run`` and ``guest_exec``. Not under the server's lock: it may
        run for long, and nothing else the driver does changes the guest's processes."""
        return guest_exec.run(
            self._paths(server_id).qga_socket,
            command,
            timeout,
            tail_bytes=tail_bytes,
            on_output=on_output,
        )

    def guest_port_open(self, server_id: int, port: int, timeout: float) -> bool:
        """See ``Driver.guest_port_open``."""
        return guest_exec.port_open(self._paths(server_id).qga_socket, port, timeout)

    def snapshot_tags(self, server_id: int) -> set[str]:
        """Tags present on all of the server's disks (empty when it has no disks)."""
        with self._lock(server_id):
            paths = self._paths(server_id)
            disks = paths.disks()
            if not disks:
                return set()
            running = process.alive_pid(paths, server_id) is not None
            per_disk = self._tags_per_disk(paths, disks, running)
            return set.intersection(*(set(names) for names in per_disk)) - {FALLBACK_TAG}

    # -- servers the database does not know -------------------------------------------------

    def server_ids_on_disk(self) -> set[int]:
        """Servers this host has a folder or a running VM for, known to vpsd or not."""
        found = {
            int(path.name)
            for path in (self.servers_dir.iterdir() if self.servers_dir.is_dir() else ())
            if path.is_dir() and path.name.isdigit()
        }
        return found | set(process.stray_vm_pids(self.servers_dir))

    def quarantine(self, server_id: int) -> Path | None:
        """Stop the VM of a server the database does not know (no guest shutdown: nobody
        owns it) and move its folder to ``<quarantine>/<time>-server-<id>/``. Nothing is
        deleted; returns where the folder went (None when there was only a process)."""
        with self._lock(server_id):
            paths = self._paths(server_id)
            for pid in process.stray_vm_pids(self.servers_dir).get(server_id, []):
                self._kill(server_id, paths, pid)
            if not paths.folder.exists():
                return None
            self.quarantine_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            target = self.quarantine_dir / f"{stamp}-server-{server_id}"
            paths.folder.rename(target)
            return target

    # -- console and recovery ----------------------------------------------------------------

    def console_tail(self, server_id: int, max_bytes: int) -> bytes:
        """See ``console.console_tail``."""
        return console.console_tail(self._paths(server_id), max_bytes)

    def trim_console(self, server_id: int, max_bytes: int) -> bool:
        """See ``console.trim_console``."""
        return console.trim_console(self._paths(server_id).console_log, max_bytes)

    def recover(self, server_id: int) -> None:
        """Thaw a guest whose filesystems vpsd froze and was interrupted before thawing."""
        with self._lock(server_id):
            paths = self._paths(server_id)
            if not paths.frozen_marker.exists():
                return
            if process.alive_pid(paths, server_id) is None:
                paths.frozen_marker.unlink(missing_ok=True)  # a VM that is off thawed too
                return
            thaw_left_frozen(paths.qga_socket, paths.frozen_marker)

    # -- internals ---------------------------------------------------------------------------

    def _wait_running(self, server_id: int, paths: process.ServerPaths) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        status = "unknown"
        while time.monotonic() < deadline:
            try:
                alive = process.alive_pid(paths, server_id) is not None
            except LivenessUnknown:
                alive = True  # a momentary failure to look: QMP below says how it is
            if not alive:
                raise DriverError(f"VM of server {server_id} exited; {process.log_tail(paths)}")
            try:
                with QmpSession(paths.qmp_socket, timeout=QMP_TIMEOUT) as qmp:
                    status = str(qmp.execute("query-status")["status"])
            except QmpError as exc:
                status = str(exc)
            if status == "running":
                return
            time.sleep(0.1)
        raise DriverError(
            f"VM of server {server_id} not running after {START_TIMEOUT:g}s (status: {status}); "
            f"{process.log_tail(paths)}"
        )

    def _kill(self, server_id: int, paths: process.ServerPaths, pid: int) -> None:
        try:
            with QmpSession(paths.qmp_socket, timeout=5.0) as qmp:
                qmp.execute("quit")
        except QmpError:
            pass  # fall through to SIGKILL
        if not process.wait_gone(paths, server_id, pid, KILL_TIMEOUT):
            process.sigkill(paths, server_id, pid)
            if not process.wait_gone(paths, server_id, pid, KILL_TIMEOUT):
                error = DriverError("the VM could not be stopped on this host")
                error.detail = f"VM of server {server_id} (pid {pid}) survived SIGKILL"
                raise error
        # QEMU removes these on a clean quit, not after SIGKILL.
        paths.pidfile.unlink(missing_ok=True)
        paths.qmp_socket.unlink(missing_ok=True)

    def _tags_per_disk(
        self, paths: process.ServerPaths, disks: list[Path], running: bool
    ) -> list[list[str]]:
        if not running:
            return [img.snapshot_names(d, timeout=self.command_timeout) for d in disks]
        # Ask QEMU itself: it holds the authoritative, possibly uncommitted, snapshot table.
        with QmpSession(paths.qmp_socket, timeout=QMP_TIMEOUT) as qmp:
            by_node = _node_snapshots(qmp)
        return [[str(s["name"]) for s in by_node.get(f"disk{i}", [])] for i in range(len(disks))]

    def _state_size(self, paths: process.ServerPaths, tag: str) -> int:
        """Bytes of saved VM state snapshot ``tag`` holds (on the first disk); 0: none."""
        with QmpSession(paths.qmp_socket, timeout=QMP_TIMEOUT) as qmp:
            snapshots = _node_snapshots(qmp).get("disk0", [])
        return sum(int(s.get("vm-state-size", 0)) for s in snapshots if s.get("name") == tag)

    def _running_state(self, paths: process.ServerPaths) -> SavedState:
        """The stamp of a state the running VM would save now (a retried snapshot's)."""
        with QmpSession(paths.qmp_socket, timeout=QMP_TIMEOUT) as qmp:
            return vmstate.running_state(qmp)

    def _create_running(
        self, paths: process.ServerPaths, disks: list[Path], tag: str
    ) -> Consistency:
        actions = [
            {"type": "blockdev-snapshot-internal-sync", "data": {"device": f"disk{i}", "name": tag}}
            for i in range(len(disks))
        ]
        try:
            # QMP is connected before the freeze: the guest stays frozen for the transaction
            # only. A transaction is all-or-nothing: QEMU aborts every action if one fails.
            with (
                QmpSession(paths.qmp_socket, timeout=self.command_timeout) as qmp,
                quiesced(paths.qga_socket, paths.frozen_marker) as frozen,
            ):
                qmp.execute("transaction", {"actions": actions})
        except QmpError as exc:
            raise DriverError(f"snapshot {tag!r} failed: {exc.desc or exc}") from exc
        return "filesystem" if frozen else "crash"

    def _create_stopped(self, disks: list[Path], tag: str) -> None:
        with ExitStack() as undo:
            for disk in disks:
                try:
                    img.snapshot_create(disk, tag, timeout=self.command_timeout)
                except HostError as exc:
                    raise DriverError(f"snapshot {tag!r} failed: {exc}") from exc
                undo.callback(self._undo_create, disk, tag)
            undo.pop_all()

    def _undo_create(self, disk: Path, tag: str) -> None:
        # Best effort: a tag left behind is cleaned up by the next create/delete of it.
        with suppress(DriverError):
            img.snapshot_delete(disk, tag, timeout=self.command_timeout)

    def _delete(
        self,
        paths: process.ServerPaths,
        disks: list[Path],
        tag: str,
        tags: list[list[str]],
        running: bool,
    ) -> None:
        having = [
            (i, d) for i, (d, names) in enumerate(zip(disks, tags, strict=True)) if tag in names
        ]
        if not having:
            return
        if not running:
            for _, disk in having:
                img.snapshot_delete(disk, tag, timeout=self.command_timeout)
            return
        with QmpSession(paths.qmp_socket, timeout=self.command_timeout) as qmp:
            for index, _ in having:
                qmp.execute(
                    "blockdev-snapshot-delete-internal-sync",
                    {"device": f"disk{index}", "name": tag},
                )


def _node_snapshots(qmp: QmpSession) -> dict[str, list[dict[str, Any]]]:
    """Each block node's internal snapshots, as QEMU holds them (by node name)."""
    nodes: list[dict[str, Any]] = qmp.execute("query-named-block-nodes", {"flat": True})
    return {n.get("node-name", ""): n.get("image", {}).get("snapshots", []) for n in nodes}


def _run_state(qmp: QmpSession, server_id: int) -> RunState:
    """The VM's run state from ``query-status``; an I/O error pause is ``DISK_FULL`` when a
    device's ``io-status`` is ``nospace``."""
    status: dict[str, Any] = qmp.execute("query-status")
    if status.get("running"):
        return RunState.RUNNING
    name = status.get("status")
    if name == "shutdown":
        return RunState.OFF  # the guest powered off; QEMU is exiting
    if name == "io-error":
        devices: list[dict[str, Any]] = qmp.execute("query-block")
        if any(device.get("io-status") == "nospace" for device in devices):
            return RunState.DISK_FULL
    log.debug("server %s: the VM is paused (QEMU status %s)", server_id, name)
    return RunState.PAUSED


def _free_bytes(folder: Path) -> int:
    """Bytes an unprivileged writer may still use on the filesystem holding ``folder``."""
    stat = os.statvfs(folder)
    return stat.f_bavail * stat.f_frsize
