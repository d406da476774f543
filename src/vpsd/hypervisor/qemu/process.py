"""Files, command line, launch and liveness of one server's qemu-system-x86_64 process.

Each server owns a folder ``<servers_dir>/<server_id>/`` with its disks, QMP socket, pidfile
and logs. QEMU daemonizes itself, so VMs outlive vpsd; liveness is read back from the pidfile
and /proc, checking the process's command line so a recycled pid is never mistaken for ours.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from vpsd.hypervisor.base import DriverError, VmSpec
from vpsd.hypervisor.qemu import command

QEMU_SYSTEM = "qemu-system-x86_64"
KVM_DEVICE = Path("/dev/kvm")
# sockaddr_un.sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


@dataclass(frozen=True, slots=True)
class ServerPaths:
    """Where one server's files live (all absolute, because QEMU chdirs to / when daemonized)."""

    folder: Path

    @classmethod
    def of(cls, servers_dir: Path, server_id: int) -> ServerPaths:
        """The paths of server ``server_id`` below ``servers_dir``."""
        return cls(servers_dir.absolute() / str(server_id))

    def disk(self, index: int) -> Path:
        """The qcow2 file of disk ``index`` (QEMU node name ``disk<index>``)."""
        return self.folder / f"disk{index}.qcow2"

    def disks(self) -> list[Path]:
        """The existing disks, in node-name order (disk0, disk1, ... without gaps)."""
        found: list[Path] = []
        while self.disk(len(found)).exists():
            found.append(self.disk(len(found)))
        return found

    @property
    def qmp_socket(self) -> Path:
        return self.folder / "qmp.sock"

    @property
    def pidfile(self) -> Path:
        return self.folder / "qemu.pid"

    @property
    def console_log(self) -> Path:
        return self.folder / "console.log"

    @property
    def qemu_log(self) -> Path:
        return self.folder / "qemu.log"


def vm_name(server_id: int) -> str:
    """The ``-name`` QEMU runs under, so ``ps`` shows which server a process belongs to."""
    return f"vpsd-server-{server_id}"


def kvm_usable() -> bool:
    """True when /dev/kvm exists and this process may open it read-write."""
    try:
        fd = os.open(KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def resolve_accel(accel: str) -> str:
    """Map the ``accel`` setting to QEMU's: ``auto`` picks kvm when usable, else tcg.

    An explicit ``kvm`` that cannot be honoured is an error rather than a silent, 10-50x
    slower TCG fallback.
    """
    if accel == "tcg":
        return "tcg"
    if accel not in ("auto", "kvm"):
        raise DriverError(f"unknown accelerator {accel!r} (expected auto, kvm or tcg)")
    if kvm_usable():
        return "kvm"
    if accel == "kvm":
        raise DriverError(f"accel=kvm was requested but {KVM_DEVICE} cannot be opened")
    return "tcg"


def build_command(spec: VmSpec, paths: ServerPaths, disks: list[Path], accel: str) -> list[str]:
    """The full qemu-system-x86_64 argument vector for ``spec`` (``accel`` already resolved)."""
    args = [
        QEMU_SYSTEM,
        "-name", vm_name(spec.server_id),
        "-machine", f"q35,accel={accel}",
        "-cpu", "host" if accel == "kvm" else "max",
        "-m", str(spec.memory_mb),
        "-smp", str(spec.vcpus),
        "-display", "none",
        "-nodefaults",
        "-no-user-config",
        "-daemonize",
        "-pidfile", str(paths.pidfile),
        "-qmp", f"unix:{paths.qmp_socket},server=on,wait=off",
        "-chardev", f"file,id=console0,path={paths.console_log}",
        "-serial", "chardev:console0",
    ]  # fmt: skip
    for index, disk in enumerate(disks):
        node = f"disk{index}"
        args += [
            "-blockdev",
            f"driver=qcow2,node-name={node},file.driver=file,file.filename={disk}",
            # share-rw lets monitor tools (HMP qemu-io in tests) write next to the guest.
            "-device",
            f"virtio-blk-pci,drive={node},id=virtio-{node},share-rw=on",
        ]
    return args


def launch(spec: VmSpec, paths: ServerPaths, disks: list[Path], accel: str, timeout: float) -> int:
    """Start the daemonized VM and return its pid; QEMU's launch stderr goes to qemu.log.

    ``-daemonize`` makes qemu-system return only once the VM is set up (or has failed), with
    the process detached in its own session and its stdio on /dev/null.
    """
    if len(str(paths.qmp_socket)) > MAX_SOCKET_PATH:
        raise DriverError(f"QMP socket path {paths.qmp_socket} is longer than 107 bytes")
    for stale in (paths.pidfile, paths.qmp_socket):
        stale.unlink(missing_ok=True)
    args = build_command(spec, paths, disks, accel)
    try:
        result = command.run(args, timeout=timeout, cwd=paths.folder)
    except command.CommandError as exc:
        paths.qemu_log.write_text(exc.stderr)
        raise
    paths.qemu_log.write_text(result.stderr)
    pid = alive_pid(paths, spec.server_id)
    if pid is None:
        raise DriverError(f"{QEMU_SYSTEM} exited right after starting; {log_tail(paths)}")
    return pid


def read_pidfile(paths: ServerPaths) -> int | None:
    """The pid recorded in the pidfile, or None when there is none (or it is garbage)."""
    try:
        return int(paths.pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def is_our_qemu(pid: int, paths: ServerPaths, server_id: int) -> bool:
    """True when ``pid`` is a live qemu-system running this server from this folder."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    argv = raw.split(b"\0")
    # A zombie has an empty cmdline, which (correctly) fails these checks too.
    return (
        vm_name(server_id).encode() in argv
        and str(paths.pidfile).encode() in argv
        and Path(argv[0].decode(errors="replace")).name.startswith("qemu-system")
    )


def alive_pid(paths: ServerPaths, server_id: int) -> int | None:
    """The pid of this server's running QEMU, or None when no such process exists."""
    pid = read_pidfile(paths)
    if pid is not None and is_our_qemu(pid, paths, server_id):
        return pid
    return None


def wait_gone(paths: ServerPaths, server_id: int, pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``pid`` to stop being our QEMU; True if it did."""
    deadline = time.monotonic() + timeout
    while is_our_qemu(pid, paths, server_id):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def sigkill(paths: ServerPaths, server_id: int, pid: int) -> None:
    """SIGKILL ``pid`` if it still is our QEMU (a pidfd rules out hitting a recycled pid)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        # Verified after the pidfd pins the process: if it is ours now, the signal hits it.
        if is_our_qemu(pid, paths, server_id):
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    finally:
        os.close(pidfd)


def log_tail(paths: ServerPaths, lines: int = 10) -> str:
    """The last lines of qemu.log, for error messages."""
    try:
        text = paths.qemu_log.read_text(errors="replace").strip()
    except OSError:
        return "qemu.log: (missing)"
    tail = "; ".join(text.splitlines()[-lines:])
    return f"qemu.log: {tail or '(empty)'}"
