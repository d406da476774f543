"""Helpers for tests that run real QEMU: skip markers, disk byte patterns, cleanup.

Disk contents are written and verified with ``qemu-io``: directly on the qcow2 file when
the VM is stopped, or inside the running QEMU through QMP's ``human-monitor-command``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from vpsd.hypervisor.qemu.qmp import QmpSession

MIB = 1024 * 1024
QEMU_BINARIES = ("qemu-img", "qemu-io", "qemu-system-x86_64")


def missing_qemu_binaries() -> list[str]:
    """The QEMU programs the integration tests need that are not on PATH."""
    return [name for name in QEMU_BINARIES if shutil.which(name) is None]


requires_qemu = pytest.mark.skipif(
    bool(missing_qemu_binaries()),
    reason=f"QEMU tools missing from PATH: {', '.join(missing_qemu_binaries())}",
)
"""Apply with ``@pytest.mark.qemu`` to tests that start VMs or run qemu-img."""


def short_tmpdir() -> Path:
    """A fresh /tmp/vpsd-XXXX dir: QMP socket paths must fit in 108 bytes."""
    return Path(tempfile.mkdtemp(prefix="vpsd-", dir="/tmp"))


CHUNK = 256 * MIB
"""qemu-io rejects single requests of 2 GiB and more; bigger ranges are split into chunks."""


def _chunks(verb: str, pattern: int, offset: int, length: int) -> list[str]:
    commands = []
    for start in range(offset, offset + length, CHUNK):
        size = min(CHUNK, offset + length - start)
        commands += ["-c", f"{verb} -P {pattern:#x} {start} {size}"]
    return commands


def _qemu_io(
    disk: Path, commands: list[str], *, read_only: bool, force_share: bool = False
) -> bool:
    args = ["qemu-io", "-f", "qcow2"]
    args += ["-r"] if read_only else []
    args += ["-U"] if force_share else []
    result = subprocess.run(
        [*args, *commands, str(disk)], capture_output=True, text=True, timeout=300
    )
    if "Pattern verification failed" in result.stdout:
        return False
    if result.returncode != 0:
        output = (result.stderr + result.stdout).strip()
        raise AssertionError(f"qemu-io {commands[1]!r}... on {disk} failed: {output}")
    return True


def write_pattern(disk: Path, pattern: int, offset: int = 0, length: int = MIB) -> None:
    """Fill ``length`` bytes at ``offset`` of a *stopped* VM's qcow2 ``disk`` with ``pattern``."""
    _qemu_io(disk, _chunks("write", pattern, offset, length), read_only=False)


def has_pattern(disk: Path, pattern: int, offset: int = 0, length: int = MIB) -> bool:
    """True when ``length`` bytes at ``offset`` of a *stopped* VM's ``disk`` all equal
    ``pattern`` (read-only: the image is not modified)."""
    return _qemu_io(disk, _chunks("read", pattern, offset, length), read_only=True)


def write_pattern_running(
    qmp_socket: Path, pattern: int, offset: int = 0, length: int = MIB, node: str = "disk0"
) -> None:
    """Write ``pattern`` through a *running* VM's QEMU (as guest I/O would), then flush.

    Uses HMP ``qemu-io`` over QMP on block node ``node``; raises AssertionError if QEMU
    reports an error.
    """
    with QmpSession(qmp_socket, timeout=60) as qmp:
        for hmp in (f'qemu-io {node} "write -P {pattern:#x} {offset} {length}"',
                    f'qemu-io {node} "flush"'):  # fmt: skip
            output = qmp.human_command(hmp)
            # HMP qemu-io prints its normal output to QEMU's stdout; only errors come back.
            assert not output.strip(), f"HMP {hmp!r} failed: {output.strip()}"


def has_pattern_running(
    qmp_socket: Path,
    disk: Path,
    pattern: int,
    offset: int = 0,
    length: int = MIB,
    node: str = "disk0",
) -> bool:
    """Like ``has_pattern`` for a *running* VM whose node ``node`` is file ``disk``.

    HMP qemu-io cannot report a pattern mismatch back over QMP, so QEMU is told to flush
    ``node`` (data and qcow2 metadata reach the file) and ``disk`` is read with force-share.
    """
    with QmpSession(qmp_socket, timeout=60) as qmp:
        output = qmp.human_command(f'qemu-io {node} "flush"')
        assert not output.strip(), f"HMP flush of {node} failed: {output.strip()}"
    return _qemu_io(
        disk, _chunks("read", pattern, offset, length), read_only=True, force_share=True
    )


def image_check(disk: Path) -> subprocess.CompletedProcess[str]:
    """``qemu-img check`` of a stopped VM's disk (returncode 0: clean, 3: only leaks)."""
    return subprocess.run(["qemu-img", "check", str(disk)], capture_output=True, text=True)


def qemu_pids_under(folder: Path) -> list[int]:
    """Pids of processes whose command line mentions ``folder`` (the VMs a test started)."""
    needle = str(folder).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and b"qemu-system" in cmdline.split(b"\0")[0]:
            pids.append(int(entry.name))
    return pids


def kill_qemus_under(folder: Path) -> None:
    """SIGKILL every QEMU whose command line mentions ``folder`` (fixture teardown)."""
    for pid in qemu_pids_under(folder):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def snapshot_tags(disk: Path) -> list[str]:
    """Internal snapshot tags on ``disk`` (``-U``: a running VM may hold the image)."""
    listed = subprocess.run(
        ["qemu-img", "snapshot", "-U", "-l", str(disk)], capture_output=True, text=True, check=True
    ).stdout
    return [line.split()[1] for line in listed.splitlines()[2:] if line.strip()]


@dataclass(frozen=True)
class Bitmap:
    """A dirty bitmap as ``qemu-img info`` lists it."""

    name: str
    flags: tuple[str, ...]


def bitmaps(disk: Path) -> list[Bitmap]:
    """The dirty bitmaps stored in ``disk`` (``-U``: a running VM may hold the image)."""
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "-U", "--output=json", str(disk)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    found = info.get("format-specific", {}).get("data", {}).get("bitmaps", [])
    return [Bitmap(item["name"], tuple(item.get("flags", []))) for item in found]


def wait_gone(pid: int, timeout: float = 10.0) -> None:
    """Wait until process ``pid`` no longer exists (a killed, daemonized QEMU is reaped by
    init)."""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} still exists after {timeout}s")
        time.sleep(0.02)
