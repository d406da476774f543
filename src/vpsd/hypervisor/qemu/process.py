"""Files, command line, launch and liveness of one server's qemu-system-x86_64 process.

Each server owns a folder ``<servers_dir>/<server_id>/`` with its disks, QMP socket, pidfile
and logs. QEMU daemonizes itself, so VMs outlive vpsd; liveness is read back from the pidfile
and /proc, checking the process's command line so a recycled pid is never mistaken for ours.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from vpsd.core import commands
from vpsd.hypervisor.base import DriverError, LivenessUnknown, VmSpec

QEMU_SYSTEM = "qemu-system-x86_64"
MACHINE = "q35"
"""The machine type every VM gets (an alias of QEMU's newest q35 version)."""
KVM_DEVICE = Path("/dev/kvm")
CPUINFO = Path("/proc/cpuinfo")
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
    def qga_socket(self) -> Path:
        """The guest agent's socket (present while a VM booted from an image runs)."""
        return self.folder / "qga.sock"

    @property
    def console_log(self) -> Path:
        """The serial console of the current boot; the previous boot's is ``.1``."""
        return self.folder / "console.log"

    @property
    def previous_console_log(self) -> Path:
        return self.folder / "console.log.1"

    @property
    def guest_config(self) -> Path:
        """Files handed to the guest through fw_cfg (``opt/org.vpsd/<name>``)."""
        return self.folder / "guest"

    @property
    def frozen_marker(self) -> Path:
        """Present while vpsd may have left the guest's filesystems frozen."""
        return self.folder / "frozen"

    @property
    def clean_shutdown_marker(self) -> Path:
        """Present while the VM is off after its guest shut down by itself (ACPI)."""
        return self.folder / "clean-shutdown"

    @property
    def qemu_log(self) -> Path:
        return self.folder / "qemu.log"


def vm_name(server_id: int) -> str:
    """The ``-name`` QEMU runs under, so ``ps`` shows which server a process belongs to."""
    return f"vpsd-server-{server_id}"


def cpu_has_virtualization(cpuinfo: Path = CPUINFO) -> bool:
    """True when the CPU advertises hardware virtualization (``vmx`` or ``svm``).

    A nested, paravirtual ``/dev/kvm`` (kvm-pvm) opens fine on a CPU without either flag,
    but a real kernel dies under it with "KVM internal error ... emulation failure".
    """
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            if flags & {"vmx", "svm"}:
                return True
    return False


def kvm_device_opens() -> bool:
    """True when /dev/kvm exists and this process may open it read-write."""
    try:
        fd = os.open(KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def resolve_accel(accel: str) -> str:
    """Map the ``accel`` setting to QEMU's.

    ``auto`` picks kvm only where it can run a real guest: /dev/kvm opens *and* the CPU has
    hardware virtualization; tcg otherwise. An explicit ``kvm`` is honoured whenever
    /dev/kvm opens (the operator knows best), and is an error when it does not, rather than
    a silent, 10-50x slower TCG fallback.
    """
    if accel == "tcg":
        return "tcg"
    if accel not in ("auto", "kvm"):
        raise DriverError(f"unknown accelerator {accel!r} (expected auto, kvm or tcg)")
    if accel == "kvm":
        if not kvm_device_opens():
            raise DriverError(f"accel=kvm was requested but {KVM_DEVICE} cannot be opened")
        return "kvm"
    return "kvm" if kvm_device_opens() and cpu_has_virtualization() else "tcg"


FW_CFG_PREFIX = "opt/org.vpsd"
"""fw_cfg names the guest's first-boot unit reads (``/sys/firmware/qemu_fw_cfg/by_name``)."""


def guest_hostname(name: str) -> str:
    """A valid hostname for a server named ``name`` (underscores become hyphens)."""
    return name.replace("_", "-")[:63].strip("-") or "server"


def write_guest_config(spec: VmSpec, paths: ServerPaths) -> None:
    """Write the files the guest reads on first boot (instance id, hostname, SSH keys)."""
    if spec.guest is None:
        return
    folder = paths.guest_config
    folder.mkdir(exist_ok=True)
    files = {
        "instance-id": f"{spec.guest.instance_id}\n",
        "hostname": f"{guest_hostname(spec.guest.hostname)}\n",
        "authorized_keys": "".join(f"{key}\n" for key in spec.guest.authorized_keys),
    }
    for name, content in files.items():
        partial = folder / f".{name}"
        partial.write_text(content)
        partial.replace(folder / name)


def mac_address(server_id: int) -> str:
    """A stable, locally administered MAC (QEMU's 52:54:00 prefix) for the server's NIC."""
    low = server_id & 0xFFFFFF
    return f"52:54:00:{low >> 16:02x}:{(low >> 8) & 0xFF:02x}:{low & 0xFF:02x}"


def build_command(
    spec: VmSpec, paths: ServerPaths, disks: list[Path], accel: str, loadvm: str | None = None
) -> list[str]:
    """The full qemu-system-x86_64 argument vector for ``spec`` (``accel`` already resolved);
    with ``loadvm``, the VM starts as that internal snapshot (taken with memory) left it."""
    args = [
        QEMU_SYSTEM,
        "-name", vm_name(spec.server_id),
        "-machine", f"{MACHINE},accel={accel}",
        # Under TCG, no virtualization extensions: the guest would load KVM for nothing.
        "-cpu", "host" if accel == "kvm" else "max",
        "-m", str(spec.memory_mb),
        "-smp", str(spec.vcpus),
        "-display", "none",
        "-nodefaults",
        "-no-user-config",
        "-daemonize",
        "-pidfile", str(paths.pidfile),
        "-qmp", f"unix:{paths.qmp_socket},server=on,wait=off",
        "-chardev", f"file,id=console0,path={paths.console_log},append=on",
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
    if spec.image is not None:
        args += _guest_arguments(spec, paths)
    if loadvm is not None:
        args += ["-loadvm", loadvm]
    return args


def _guest_arguments(spec: VmSpec, paths: ServerPaths) -> list[str]:
    """Direct kernel boot, the guest agent channel, entropy, fw_cfg and the network."""
    assert spec.image is not None
    args = [
        "-kernel", str(spec.image.kernel),
        "-initrd", str(spec.image.initrd),
        "-append", spec.image.cmdline,
        "-device", "virtio-rng-pci",
        "-device", "virtio-serial-pci,id=vserial0",
        "-chardev", f"socket,id=qga0,path={paths.qga_socket},server=on,wait=off",
        "-device", "virtserialport,bus=vserial0.0,chardev=qga0,name=org.qemu.guest_agent.0",
    ]  # fmt: skip
    if spec.guest is not None:
        for name in ("instance-id", "hostname", "authorized_keys"):
            path = paths.guest_config / name
            args += ["-fw_cfg", f"name={FW_CFG_PREFIX}/{name},file={path}"]
    # restrict=on: the guest reaches nothing beyond QEMU's own DHCP; only the forward in.
    netdev = "user,id=net0,restrict=on"
    if spec.ssh is not None:
        netdev += f",hostfwd=tcp:{spec.ssh.host}:{spec.ssh.port}-:22"
    args += [
        "-netdev", netdev,
        "-device", f"virtio-net-pci,netdev=net0,mac={mac_address(spec.server_id)}",
    ]  # fmt: skip
    return args


def launch(
    spec: VmSpec,
    paths: ServerPaths,
    disks: list[Path],
    accel: str,
    timeout: float,
    loadvm: str | None = None,
) -> int:
    """Start the daemonized VM and return its pid; QEMU's launch stderr goes to qemu.log.
    With ``loadvm``, it starts as that snapshot left it (``build_command``).

    ``-daemonize`` makes qemu-system return only once the VM is set up (or has failed), with
    the process detached in its own session and its stdio on /dev/null.
    """
    if len(str(paths.qmp_socket)) > MAX_SOCKET_PATH:
        raise DriverError(f"QMP socket path {paths.qmp_socket} is longer than 107 bytes")
    for stale in (paths.pidfile, paths.qmp_socket, paths.qga_socket, paths.clean_shutdown_marker):
        stale.unlink(missing_ok=True)
    if paths.console_log.exists():
        paths.console_log.replace(paths.previous_console_log)
    write_guest_config(spec, paths)
    args = build_command(spec, paths, disks, accel, loadvm)
    try:
        result = commands.run(args, timeout=timeout, cwd=paths.folder)
    except commands.CommandError as exc:
        paths.qemu_log.write_text(exc.stderr)
        raise
    paths.qemu_log.write_text(result.stderr)
    pid = alive_pid(paths, spec.server_id)
    if pid is None:
        raise DriverError(f"{QEMU_SYSTEM} exited right after starting; {log_tail(paths)}")
    # A daemonized QEMU sets its own umask (027): what it created is the owner's alone too.
    for created in (paths.console_log, paths.qmp_socket, paths.qga_socket, paths.pidfile):
        with contextlib.suppress(FileNotFoundError):
            created.chmod(0o600)
    return pid


GONE_ERRNOS = frozenset({errno.ENOENT, errno.ESRCH})
"""Errors reading ``/proc/<pid>`` that mean "no such process"; any other (EMFILE, ENFILE,
EACCES, EIO...) means the answer is unknown."""


def read_pidfile(paths: ServerPaths) -> int | None:
    """The pid recorded in the pidfile, or None when there is none (or it is garbage).

    Raises ``LivenessUnknown`` when the pidfile exists but cannot be read (EMFILE...).
    """
    try:
        text = paths.pidfile.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LivenessUnknown(f"cannot read {paths.pidfile}: {exc}") from exc
    try:
        return int(text.strip())
    except ValueError:
        return None


def is_our_qemu(pid: int, paths: ServerPaths, server_id: int) -> bool:
    """True when ``pid`` is a live qemu-system running this server from this folder.

    False only when no such process exists (ENOENT, ESRCH) or its command line is not ours;
    raises ``LivenessUnknown`` when ``/proc/<pid>/cmdline`` cannot be read for another
    reason, since a VM that cannot be seen may well be running.
    """
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError as exc:
        if exc.errno in GONE_ERRNOS:
            return False
        raise LivenessUnknown(f"cannot read /proc/{pid}/cmdline: {exc}") from exc
    argv = raw.split(b"\0")
    # A zombie has an empty cmdline, which (correctly) fails these checks too.
    return (
        vm_name(server_id).encode() in argv
        and str(paths.pidfile).encode() in argv
        and Path(argv[0].decode(errors="replace")).name.startswith("qemu-system")
    )


def alive_pid(paths: ServerPaths, server_id: int) -> int | None:
    """The pid of this server's running QEMU, or None when no such process exists.

    Raises ``LivenessUnknown`` when the pidfile or ``/proc`` cannot be read.
    """
    pid = read_pidfile(paths)
    if pid is not None and is_our_qemu(pid, paths, server_id):
        return pid
    return None


def wait_gone(paths: ServerPaths, server_id: int, pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``pid`` to stop being our QEMU; True if it did.

    A check that cannot be made is retried like one that saw the VM alive; if the last
    check before the deadline could not be made either, ``LivenessUnknown`` is raised
    (the VM may be gone, or not: neither answer would be true).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if not is_our_qemu(pid, paths, server_id):
                return True
        except LivenessUnknown:
            if time.monotonic() >= deadline:
                raise
        else:
            if time.monotonic() >= deadline:
                return False
        time.sleep(0.05)


def sigkill(paths: ServerPaths, server_id: int, pid: int) -> None:
    """SIGKILL ``pid`` if it still is our QEMU (a pidfd rules out hitting a recycled pid)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError as exc:
        raise LivenessUnknown(f"cannot open a pidfd for process {pid}: {exc}") from exc
    try:
        # Verified after the pidfd pins the process: if it is ours now, the signal hits it.
        if is_our_qemu(pid, paths, server_id):
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    finally:
        os.close(pidfd)


def stray_vm_pids(servers_dir: Path) -> dict[int, list[int]]:
    """Our QEMU processes below ``servers_dir`` by server id, read from ``/proc``: whatever
    their pidfile says (a folder may be gone while its VM still runs)."""
    prefix = str(servers_dir.absolute()).encode() + b"/"
    found: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if not Path(argv[0].decode(errors="replace")).name.startswith("qemu-system"):
            continue
        server_id = _server_of(argv, prefix)
        if server_id is not None:
            found.setdefault(server_id, []).append(int(entry.name))
    return found


def _server_of(argv: list[bytes], prefix: bytes) -> int | None:
    """The server id of a QEMU started by vpsd below ``prefix``, else None."""
    try:
        name = argv[argv.index(b"-name") + 1].decode()
        pidfile = argv[argv.index(b"-pidfile") + 1]
    except (ValueError, IndexError):
        return None
    if not (name.startswith("vpsd-server-") and pidfile.startswith(prefix)):
        return None
    number = name.removeprefix("vpsd-server-")
    return int(number) if number.isdigit() else None


def log_tail(paths: ServerPaths, lines: int = 10) -> str:
    """The last lines of qemu.log, for error messages."""
    try:
        text = paths.qemu_log.read_text(errors="replace").strip()
    except OSError:
        return "qemu.log: (missing)"
    tail = "; ".join(text.splitlines()[-lines:])
    return f"qemu.log: {tail or '(empty)'}"
