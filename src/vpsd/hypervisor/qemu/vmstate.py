"""Snapshots with memory: the VM's RAM and device state saved beside its disks' internal
snapshot, and resumed later exactly where the guest was.

Saving is QMP ``snapshot-save``, a job in QEMU 7.2: QEMU stops the VM, writes its state into
the first disk's snapshot area and snapshots every disk under one tag, then lets the VM run
on. It happens with the guest's filesystems frozen (``quiesce``), so the disks alone are
``filesystem``-consistent too (a new server made from the snapshot boots from them), and the
saved state is of a frozen guest: resuming thaws it.

Resuming starts a new QEMU with ``-loadvm TAG``: the disks are reverted and the state loaded
before the VM runs (as libvirt's revert does); then the guest's clock is set to now and its
filesystems thawed, through the guest agent. A state only resumes on the QEMU build, machine
type, memory and vCPUs it was saved with (``SavedState``): anything else is refused before
the running VM is touched.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

from vpsd.core import commands
from vpsd.hypervisor.base import DriverError, ResumeRefused, SavedState, VmSpec
from vpsd.hypervisor.qemu import process
from vpsd.hypervisor.qemu.guest_agent import GuestAgent, GuestAgentError
from vpsd.hypervisor.qemu.qmp import QmpError, QmpSession
from vpsd.hypervisor.qemu.quiesce import quiesced

log = logging.getLogger(__name__)

MEMINFO = Path("/proc/meminfo")
QEMU_OVERHEAD_MB = 128
"""Memory a QEMU process needs beyond its guest's, checked free before a stopped VM resumes."""
JOB_POLL = 0.01
AGENT_SETTLE_TIMEOUT = 10.0
"""Seconds a resumed guest's agent has to answer the clock and thaw requests."""


def save(
    paths: process.ServerPaths, disks: list[Path], tag: str, timeout: float
) -> tuple[SavedState, float, bool]:
    """Snapshot the running VM's disks as ``tag`` with its memory and device state; return
    the state's stamp, the seconds the guest was paused (at most: the job's whole time), and
    whether its filesystems were frozen."""
    devices = [f"disk{i}" for i in range(len(disks))]
    job = f"save-{tag}"
    try:
        with (
            QmpSession(paths.qmp_socket, timeout=timeout) as qmp,
            quiesced(paths.qga_socket, paths.frozen_marker) as frozen,
        ):
            saved = running_state(qmp)
            started = time.monotonic()
            qmp.execute(
                "snapshot-save",
                {"job-id": job, "tag": tag, "vmstate": devices[0], "devices": devices},
            )
            _wait_job(qmp, job, timeout)
            paused = time.monotonic() - started
    except QmpError as exc:
        raise DriverError(f"snapshot {tag!r} with memory failed: {exc.desc or exc}") from exc
    return saved, paused, frozen


def check_resumable(saved: SavedState, spec: VmSpec, *, running: bool, timeout: float) -> None:
    """Raise ``ResumeRefused`` when ``saved`` cannot resume as ``spec`` on this host now."""
    installed = installed_version(timeout)
    checks = (
        ("QEMU", saved.qemu_version, installed),
        ("machine type", saved.machine, process.MACHINE),
        ("memory (MiB)", str(saved.memory_mb), str(spec.memory_mb)),
        ("vCPUs", str(saved.vcpus), str(spec.vcpus)),
    )
    for what, then, now in checks:
        if then != now:
            raise ResumeRefused(
                f"this snapshot's memory cannot be resumed: the server's {what} was {then} "
                f"when it was taken and is {now} now; make a new server from the snapshot "
                "instead (it boots from the snapshot's disks)"
            )
    if not running:  # a running VM's memory is freed for the resumed one
        available = _available_mb()
        if available is not None and available < spec.memory_mb + QEMU_OVERHEAD_MB:
            error = ResumeRefused(
                "the host has not enough free memory to resume this snapshot now; try again later"
            )
            error.detail = f"{available} MiB available, {spec.memory_mb} MiB needed"
            raise error


def resume(spec: VmSpec, paths: process.ServerPaths, tag: str, accel: str, timeout: float) -> None:
    """Start the stopped VM as snapshot ``tag`` left it, then set its guest's clock and thaw
    it (best effort: a guest without an agent runs on with its old clock)."""
    # Before the launch: a vpsd killed from here on finds the guest maybe frozen, and thaws.
    paths.frozen_marker.touch()
    process.launch(spec, paths, paths.disks(), accel, timeout, loadvm=tag)
    _settle_guest(paths)


def installed_version(timeout: float) -> str:
    """The installed qemu-system's version, in ``SavedState.qemu_version``'s form."""
    first = commands.run([process.QEMU_SYSTEM, "--version"], timeout=timeout).stdout
    found = re.search(r"version (\S+)(?: \((.+?)\))?", first)
    if found is None:
        raise DriverError(f"cannot read the version of {process.QEMU_SYSTEM}: {first[:200]!r}")
    number, package = found.groups()
    return f"{number} ({package})" if package else number


def running_state(qmp: QmpSession) -> SavedState:
    """The stamp of the state the running VM would save now: its QEMU's version (in
    ``installed_version``'s form), machine type, memory and vCPUs, as QEMU reports them."""
    answer = qmp.execute("query-version")
    qemu = answer["qemu"]
    number = f"{qemu['major']}.{qemu['minor']}.{qemu['micro']}"
    package = str(answer.get("package", "")).strip()
    memory = int(qmp.execute("query-memory-size-summary")["base-memory"])
    vcpus = len(qmp.execute("query-cpus-fast"))
    version = f"{number} ({package})" if package else number
    return SavedState(version, process.MACHINE, memory // (1024 * 1024), vcpus)


def _wait_job(qmp: QmpSession, job: str, timeout: float) -> None:
    """Wait for QMP job ``job`` to conclude, dismiss it, and raise ``QmpError`` with QEMU's
    words if it failed."""
    deadline = time.monotonic() + timeout
    while True:
        found = [entry for entry in qmp.execute("query-jobs") if entry.get("id") == job]
        if not found:
            raise QmpError(f"QMP job {job} vanished")
        if found[0].get("status") == "concluded":
            break
        if time.monotonic() > deadline:
            qmp.execute("job-cancel", {"id": job})
            raise QmpError(f"QMP job {job} did not end within {timeout:g}s")
        time.sleep(JOB_POLL)
    qmp.execute("job-dismiss", {"id": job})
    if error := found[0].get("error"):
        raise QmpError(f"QMP job {job} failed: {error}", desc=str(error))


def _settle_guest(paths: process.ServerPaths) -> None:
    """Set the resumed guest's clock to now and thaw its filesystems, retrying while its
    agent comes back; the frozen marker stays when no thaw was confirmed (recovery thaws)."""
    if not paths.qga_socket.exists():  # no guest agent channel: a blank server
        paths.frozen_marker.unlink(missing_ok=True)
        return
    deadline = time.monotonic() + AGENT_SETTLE_TIMEOUT
    while True:
        try:
            with GuestAgent(paths.qga_socket, timeout=2.0) as agent:
                # Thawed first: a frozen guest's agent refuses every other command.
                if agent.execute("guest-fsfreeze-status", timeout=5.0) == "frozen":
                    agent.execute("guest-fsfreeze-thaw", timeout=5.0)
                paths.frozen_marker.unlink(missing_ok=True)
                agent.execute("guest-set-time", {"time": time.time_ns()}, timeout=5.0)
            return
        except GuestAgentError as exc:
            if time.monotonic() > deadline:
                log.warning("resumed guest at %s: no clock set or thaw (%s)", paths.folder, exc)
                return
            time.sleep(0.2)


def _available_mb() -> int | None:
    """The host's available memory (``MemAvailable``) in MiB; None when unreadable."""
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError):
        return None
    return None
