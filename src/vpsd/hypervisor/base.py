"""The hypervisor driver contract.

A driver knows files, processes and QMP; it never sees the database. Services hand it a
``VmSpec`` (what to run) or a server id (what to act on), and every method is idempotent so
that an operation interrupted by a crash can simply be executed again.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO, Literal, Protocol

from vpsd.core.disks import DiskChanges, DiskSource
from vpsd.core.errors import HostError


class DriverError(HostError):
    """A hypervisor action failed; ``str(error)`` is a reason fit to show a user, ``detail``
    (QEMU's own words, paths, pids) is for the operator's log only (``HostError``)."""


class IncompleteDisks(DriverError):
    """``start`` refuses a server whose disks a ``disk_writer`` rewrite left unfinished:
    their bytes may be a mix of old and new."""

    def __init__(self) -> None:
        super().__init__(
            "this server's disk is incomplete: a restore into it did not finish; restore a "
            "backup or a snapshot into it, or delete the server"
        )


class LivenessUnknown(DriverError):
    """Whether the VM's process is alive could not be read (e.g. ``/proc`` unreadable for
    lack of file descriptors: EMFILE, ENFILE; or EACCES).

    It means neither "running" nor "stopped": the caller retries or fails, and never records
    either state on its strength.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(
            "the host could not tell whether the VM is running (a temporary problem on the host)"
        )
        self.detail = detail


class ResumeRefused(DriverError):
    """A snapshot's saved state cannot be resumed here; nothing was changed."""


class BootFailed(DriverError):
    """QEMU could not start the VM.

    Unlike other driver errors, ``str(error)`` is QEMU's own account (host memory, KVM
    limits, paths): the operator's, never the tenant's. Operation handlers log it and show
    the server's owner a generic reason instead.
    """


class PowerState(StrEnum):
    """What the hypervisor says about a VM, independent of what the database believes."""

    RUNNING = "running"
    STOPPED = "stopped"


class RunState(StrEnum):
    """What a VM's CPUs are doing, from QMP ``query-status``, apart from its process's life."""

    RUNNING = "running"
    DISK_FULL = "disk-full"
    """QEMU paused the guest because a disk write found no space on the host (its default
    ``werror=enospc``); ``cont`` retries the write once there is space again."""
    PAUSED = "paused"
    """Paused for another reason (a QMP ``stop``, another I/O error, a guest sleep...)."""
    OFF = "off"
    """No VM process (or the guest powered off and QEMU is exiting)."""


@dataclass(frozen=True, slots=True)
class GuestImage:
    """A bootable image: the immutable base disk a server's disk is a copy-on-write overlay
    of, and the kernel, initrd and command line it boots with (direct kernel boot)."""

    disk: Path
    kernel: Path
    initrd: Path
    cmdline: str


@dataclass(frozen=True, slots=True)
class GuestConfig:
    """What a guest configures on its first boot (of each ``instance_id``)."""

    instance_id: str
    hostname: str
    authorized_keys: tuple[str, ...] = ()
    """OpenSSH public key lines for ``root``."""


@dataclass(frozen=True, slots=True)
class SshForward:
    """A host address and port forwarded to the guest's port 22 (QEMU user networking)."""

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class VmSpec:
    """Everything a driver needs to create and boot one server's VM.

    A server without ``image`` has a blank disk and no network card (tests, bare disks).
    """

    server_id: int
    memory_mb: int
    vcpus: int
    disk_gb: int
    image: GuestImage | None = None
    guest: GuestConfig | None = None
    ssh: SshForward | None = None


@dataclass(frozen=True, slots=True)
class StopResult:
    """How a VM stopped: ``forced`` is true when the graceful power-down timed out, or was
    not tried because the VM was ``paused`` (its guest could not answer the power button)."""

    forced: bool
    paused: bool = False


Consistency = Literal["filesystem", "crash"]
"""``filesystem``: the guest's filesystems were frozen (or it had shut down cleanly) when the
snapshot was taken; ``crash``: as consistent as after a power cut."""


@dataclass(frozen=True, slots=True)
class SnapshotResult:
    """What ``snapshot_create`` took: the guest bytes it captured, and how consistently;
    with memory, the saved state's stamp and how long the guest was paused for it."""

    captured_bytes: int
    consistency: Consistency
    saved_state: SavedState | None = None
    pause_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class SavedState:
    """What a snapshot's saved memory and device state can only be resumed by: the same
    QEMU build and machine type, and a VM of the same memory and vCPUs. Kept with the
    snapshot (the driver knows no database) and handed back to ``snapshot_resume``."""

    qemu_version: str
    machine: str
    memory_mb: int
    vcpus: int

    def as_dict(self) -> dict[str, str | int]:
        """Its fields, for storing as JSON."""
        return {
            "qemu_version": self.qemu_version,
            "machine": self.machine,
            "memory_mb": self.memory_mb,
            "vcpus": self.vcpus,
        }


@dataclass(frozen=True, slots=True)
class ExecResult:
    """How a command run in a guest ended (``Driver.guest_run``)."""

    exit_code: int | None
    """Its exit status (128 + N when signal N ended it); None when it never ended: killed
    at its timeout, or lost (the guest rebooted, its agent restarted)."""
    timed_out: bool
    interrupted: bool
    """Lost: the guest's agent no longer knew the command (a reboot, an agent restart)."""
    output: bytes
    """The last bytes of its stdout and stderr together (at most what was asked)."""
    output_bytes: int
    """How many bytes it wrote in all."""


@dataclass(frozen=True, slots=True)
class DiskInfo:
    """One of a server's disks: its name (``disk0``, ``disk1``...) and its size in bytes."""

    name: str
    size_bytes: int


@dataclass(frozen=True, slots=True)
class BackupPoint:
    """What ``backup_point_create`` took: a snapshot of every disk, its captured bytes and
    consistency (as ``SnapshotResult``), and each disk's changes since the checkpoint asked."""

    captured_bytes: int
    consistency: Consistency
    disks: tuple[DiskChanges, ...]


@dataclass(frozen=True, slots=True)
class VmInfo:
    """A VM's live state, for reconciliation and for tests."""

    power_state: PowerState
    pid: int | None
    reason: str | None = None


class Driver(Protocol):
    """Operations on one host's VMs and their disks. All methods are idempotent."""

    def create_disks(self, spec: VmSpec) -> None:
        """Create the server's disks if they do not exist yet (never overwrites)."""
        ...

    def start(self, spec: VmSpec) -> None:
        """Boot the VM if it is not running; return once QEMU reports it running.

        Raises ``IncompleteDisks`` for a stopped VM with an incomplete disk
        (``incomplete_disks``): it never boots a mix of old and new bytes."""
        ...

    def stop(self, server_id: int, timeout: float) -> StopResult:
        """Power the VM down gracefully (ACPI), forcing it off after ``timeout`` seconds."""
        ...

    def kill(self, server_id: int) -> None:
        """Stop the VM at once (no guest shutdown). No-op when it is not running."""
        ...

    def info(self, server_id: int) -> VmInfo:
        """Report whether the VM's process is alive, from its pidfile and /proc.

        Raises ``LivenessUnknown`` when that cannot be read (never guesses "stopped"); so do
        ``start``, ``stop``, ``kill`` and ``destroy``, which act on the answer.
        """
        ...

    def run_state(self, server_id: int) -> RunState:
        """What the VM's CPUs are doing (``OFF`` when it is not running).

        Raises ``DriverError`` when the VM's monitor cannot be asked right now (another call
        on this VM is under way, or QEMU does not answer).
        """
        ...

    def resume(self, server_id: int) -> RunState:
        """Continue a VM paused on a full disk (``DISK_FULL``) once the filesystem holding
        its disks has room again; return the state afterwards. Any other state is left
        alone (a VM paused for another reason stays paused)."""
        ...

    def destroy(self, server_id: int) -> None:
        """Kill the VM and remove all of its files. No-op when nothing is left."""
        ...

    def snapshot_create(
        self, server_id: int, tag: str, *, fresh: bool = False, memory: bool = False
    ) -> SnapshotResult:
        """Take an internal snapshot ``tag`` of all the server's disks, atomically.

        Uses one QMP transaction while the VM runs (between the guest agent's filesystem
        freeze and thaw when the agent answers), ``qemu-img snapshot -c`` when it is
        stopped. If ``tag`` already exists on every disk (an earlier attempt got that far),
        nothing is taken again and the result says ``crash``, since how it was taken is
        unknown. ``fresh``: no earlier attempt can have taken ``tag``, so the look for a
        leftover may be skipped. Returns the guest bytes captured and the consistency obtained.

        With ``memory`` (a running VM only: ``DriverError`` otherwise) the VM's memory and
        device state are saved with the disks, the guest paused meanwhile; the result carries
        the ``SavedState`` to resume it by and the pause.
        """
        ...

    def snapshot_restore(self, server_id: int, tag: str) -> None:
        """Revert every disk of a stopped VM to ``tag``; raises if the VM is running."""
        ...

    def snapshot_resume(self, spec: VmSpec, tag: str, saved: SavedState) -> None:
        """Put the VM back exactly as snapshot ``tag`` (taken with memory) left it, running:
        its disks, memory and devices, the guest's clock set to now. Whatever runs now is
        killed first. Raises ``ResumeRefused``, having changed nothing, when ``saved`` cannot
        be resumed here (another QEMU build or machine type, another memory or vCPU count
        than ``spec``'s, too little free memory on the host)."""
        ...

    def snapshot_delete(self, server_id: int, tag: str) -> None:
        """Delete ``tag`` from every disk that has it (running or stopped VM)."""
        ...

    def guest_run(
        self,
        server_id: int,
        command: str,
        timeout: float,
        *,
        tail_bytes: int,
        on_output: Callable[[bytes], None] | None = None,
    ) -> ExecResult:
        """Run ``command`` with ``/bin/sh -c`` as root in the running guest, through its
        agent; hand ``on_output`` its new output as it comes; kill it (and what it started)
        after ``timeout`` seconds. Holds at most the last ``tail_bytes`` of its output.
        Raises ``DriverError`` when the guest's agent cannot start it."""
        ...

    def guest_port_open(self, server_id: int, port: int, timeout: float) -> bool:
        """Whether something in the running guest accepts TCP connections on its
        127.0.0.1:``port``; ``DriverError`` when the guest's agent does not answer."""
        ...

    def snapshot_tags(self, server_id: int) -> set[str]:
        """The internal snapshot tags present on all of the server's disks."""
        ...

    def disks(self, server_id: int) -> list[DiskInfo]:
        """The server's disks, in order (empty when it has none)."""
        ...

    def snapshot_reader(
        self, server_id: int, tag: str, disk: str
    ) -> AbstractContextManager[IO[bytes]]:
        """A stream of ``disk``'s raw bytes as of snapshot ``tag`` (running or stopped VM).

        The consumer reads it to its end (and may close it); leaving the context raises
        ``DriverError`` when the stream failed or was cut short.
        """
        ...

    def disk_writer(
        self, spec: VmSpec, disk: str, size_bytes: int
    ) -> AbstractContextManager[IO[bytes]]:
        """A stream whose raw bytes become ``disk``'s content from its start; the VM must be
        stopped, and an existing disk be ``size_bytes`` long. Leaving the context raises
        ``DriverError`` when the write failed.

        An existing disk is written in place (its internal snapshots stay) after its state
        is kept to fall back to: from then on it is incomplete (``incomplete_disks``; a
        later write, a rerun's, keeps the first state) until ``finish_rewrite`` keeps the
        new bytes or puts the old ones back, whether the write ended well, failed, or vpsd
        died during it. A missing disk is created on its own (no image below it), of
        ``size_bytes`` or ``spec.disk_gb`` GiB if larger, and appears only once the stream
        has ended well."""
        ...

    def finish_rewrite(self, server_id: int, *, keep: bool) -> None:
        """End the rewrite of the stopped server's disks by ``disk_writer``: drop the state
        each kept to fall back to, after putting it back unless ``keep``. A no-op for disks
        with none."""
        ...

    def incomplete_disks(self, server_id: int) -> list[str]:
        """The server's disks a ``disk_writer`` rewrite left unfinished (``finish_rewrite``
        not called): their bytes may be a mix, and ``start`` refuses them."""
        ...

    def backup_point_create(
        self, server_id: int, tag: str, checkpoint: str, since: str | None
    ) -> BackupPoint:
        """Take internal snapshot ``tag`` of every disk and start recording changes under
        ``checkpoint``, at one point in time (one QMP transaction while the VM runs, with
        the guest frozen as for ``snapshot_create``; ``qemu-img`` when it is stopped).

        For each disk, the result says what was written between the point of checkpoint
        ``since`` (an earlier backup of these disks) and this one, or why that is unknown:
        every change of a disk outside the guest's own writes (a snapshot or backup restore,
        a resize, a VM killed mid-write, a record removed by hand, a disk made anew) breaks
        the chain, and then the whole disk must be read. Change records other than
        ``since`` and ``checkpoint`` are dropped. A leftover ``tag`` or ``checkpoint`` of an
        interrupted attempt is replaced.
        """
        ...

    def backup_source(
        self, server_id: int, tag: str, changes: DiskChanges
    ) -> AbstractContextManager[DiskSource]:
        """Random access to disk ``changes.name`` as of snapshot ``tag`` of a backup point
        (running or stopped VM); leaving the context raises ``DriverError`` when a read
        failed."""
        ...

    def backup_point_finish(self, server_id: int, tag: str, checkpoint: str, *, kept: bool) -> None:
        """End a backup point: delete snapshot ``tag``; when the backup was ``kept``
        (stored whole), ``checkpoint`` becomes each disk's only change record, else it is
        dropped and the earlier record (``since``) stays the base of the next backup."""
        ...

    def snapshot_clone(self, source_server_id: int, tag: str, spec: VmSpec) -> None:
        """Create ``spec``'s disks as copies of another server's disks at snapshot ``tag``,
        grown to ``spec.disk_gb``; a no-op when they exist. Copy-on-write above
        ``spec.image``, which must be the source's image (or None)."""
        ...

    def console_tail(self, server_id: int, max_bytes: int) -> bytes:
        """The last ``max_bytes`` of the VM's serial console (this boot, then the one before)."""
        ...

    def trim_console(self, server_id: int, max_bytes: int) -> bool:
        """Cut the console log to its end when it grew past ``max_bytes``; True if cut."""
        ...

    def server_ids_on_disk(self) -> set[int]:
        """Every server this host has files or a running VM for, known to vpsd or not."""
        ...

    def quarantine(self, server_id: int) -> Path | None:
        """Stop the VM of a server no record knows and move its files aside, deleting
        nothing; where they went (None when there were none)."""
        ...

    def recover(self, server_id: int) -> None:
        """Undo what an interrupted call may have left in a live VM (a guest left frozen)."""
        ...
