"""A separate "storage host" for backups: Debian's own ``sshd`` serving SFTP on 127.0.0.1.

It runs with its own host key, config, pidfile and log in a temporary dir, on a free port,
and lets one client key (made with ``ssh-keygen`` there) in as root. restic reaches it as an
operator's offsite repository would, through ``sftp:`` and ``-o sftp.command=...``::

    with storage_host() as host:
        with serving(backup_repository=host.repository,
                     backup_sftp_command=host.sftp_command) as live:
            ...
            host.stop()    # the storage host is down: nothing listens on its port
            host.start()   # back again, same port, keys and repository

Tests are skipped (with the reason) when ``/usr/sbin/sshd`` or ``ssh-keygen`` is missing
or the tests do not run as root (``scripts/setup --test`` installs openssh-server).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.live_server import free_port

SSHD = Path("/usr/sbin/sshd")
PRIVSEP_DIR = Path("/run/sshd")
"""sshd refuses to start without its privilege separation dir (made by Debian's unit)."""


def skip_reason() -> str | None:
    """Why a storage host cannot run here, or None."""
    if not SSHD.exists():
        return f"{SSHD} is missing (install openssh-server; scripts/setup --test does)"
    if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        return "ssh or ssh-keygen is missing (install openssh-client)"
    if os.geteuid() != 0:
        return "the SFTP storage host (sshd with its own config) needs root"
    return None


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vpsd-test", "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )


class StorageHost:
    """One sshd in ``root`` (a temp dir): keys, config, log, and ``repo`` for restic."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.host_key = root / "ssh_host_ed25519_key"
        self.client_key = root / "client_ed25519"
        self.config = root / "sshd_config"
        self.pidfile = root / "sshd.pid"
        self.log_path = root / "sshd.log"
        self.repo_dir = root / "repo"
        self.process: subprocess.Popen[bytes] | None = None
        _keygen(self.host_key)
        _keygen(self.client_key)
        (root / "authorized_keys").write_text(
            self.client_key.with_suffix(".pub").read_text(), encoding="ascii"
        )
        self.config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.host_key}",
                    f"PidFile {self.pidfile}",
                    f"AuthorizedKeysFile {root / 'authorized_keys'}",
                    "PermitRootLogin prohibit-password",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    # PAM's session modules (pam_loginuid) fail in containers; not needed here.
                    "UsePAM no",
                    # The key lives under /tmp (world-writable): no ownership walk up to /.
                    "StrictModes no",
                    "Subsystem sftp internal-sftp",
                    "LogLevel VERBOSE",
                    "",
                ]
            ),
            encoding="ascii",
        )

    @property
    def repository(self) -> str:
        """The restic repository on this host: ``sftp:root@127.0.0.1:/<dir>/repo``."""
        return f"sftp:root@127.0.0.1:{self.repo_dir}"

    @property
    def sftp_command(self) -> str:
        """What restic runs to reach it (``-o sftp.command=...``)."""
        return (
            f"ssh -p {self.port} -i {self.client_key} -o StrictHostKeyChecking=no "
            "-o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR "
            "-o ConnectTimeout=10 root@127.0.0.1 -s sftp"
        )

    def start(self, timeout: float = 15.0) -> None:
        """Start sshd (again) on the same port, keys and repository; wait until it accepts."""
        if self.running:
            return
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        with self.log_path.open("ab") as log:
            # -D: in the foreground, a child of this test process; -e: log to stderr (the log).
            self.process = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not self._accepts():
            if self.process.poll() is not None:
                raise AssertionError(f"sshd exited {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"sshd did not listen on port {self.port}:\n{self.log()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop sshd and every session it serves: nothing answers on its port until ``start``."""
        if self.process is None:
            return
        for _ in range(2):  # a connection forked meanwhile is caught the second time
            for pid in [*_descendants(self.process.pid), self.process.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.process.wait(10)
        self.process = None
        self.pidfile.unlink(missing_ok=True)

    @property
    def running(self) -> bool:
        """True while this host's sshd runs."""
        return self.process is not None and self.process.poll() is None

    def ssh(self, *command: str) -> subprocess.CompletedProcess[str]:
        """Run ``command`` on the storage host as root (a check of what the host holds)."""
        return subprocess.run(
            [*self.sftp_command.split()[:-3], "root@127.0.0.1", *command],
            capture_output=True,
            text=True,
            timeout=30,
        )

    def log(self) -> str:
        """What sshd logged."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _accepts(self) -> bool:
        with socket.socket() as sock:
            sock.settimeout(1)
            try:
                sock.connect(("127.0.0.1", self.port))
                return sock.recv(4).startswith(b"SSH-")
            except OSError:
                return False


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (sshd's per-connection children call setsid)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@contextmanager
def storage_host() -> Iterator[StorageHost]:
    """A started ``StorageHost`` in a fresh temp dir, stopped and removed afterwards (the
    test is skipped with the reason when sshd cannot run here)."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="vpsd-storage-", dir="/tmp"))
    host = StorageHost(root)
    try:
        host.start()
        yield host
    finally:
        host.stop()
        shutil.rmtree(root, ignore_errors=True)
