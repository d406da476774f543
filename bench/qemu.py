"""qemu-io / qemu-img steps the benchmarks time: filling disks, snapshots, full copies."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from bench.util import MIB, timed

CHUNK = 256 * MIB
"""qemu-io rejects single requests of 2 GiB and more, so writes go in 256 MiB chunks."""


def write_args(pattern: int, length: int, offset: int = 0) -> list[str]:
    """qemu-io ``-c`` arguments writing ``pattern`` over ``[offset, offset+length)``."""
    args: list[str] = []
    for start in range(offset, offset + length, CHUNK):
        size = min(CHUNK, offset + length - start)
        args += ["-c", f"write -P {pattern:#x} {start} {size}"]
    return args


def write(disk: Path, pattern: int, length: int) -> float:
    """Write ``length`` bytes of ``pattern`` into a qcow2 no VM has open, flushed at the end
    (qemu-io flushes on close); return the wall time, process start included."""
    return timed(["qemu-io", "-f", "qcow2", *write_args(pattern, length), "-c", "flush", str(disk)])


def create_image(path: Path, size: int) -> None:
    """A fresh qcow2 the way vpsd makes server disks."""
    from vpsd.hypervisor.qemu import img

    img.create(path, size, timeout=120)


def snapshot(disk: Path, tag: str) -> float:
    """``qemu-img snapshot -c``; its wall time."""
    return timed(["qemu-img", "snapshot", "-c", tag, str(disk)])


def snapshot_delete(disk: Path, tag: str) -> float:
    """``qemu-img snapshot -d``; its wall time."""
    return timed(["qemu-img", "snapshot", "-d", tag, str(disk)])


def snapshot_tags(disk: Path) -> list[str]:
    """Internal snapshot tags of a disk (force-share: its VM may be running)."""
    out = subprocess.run(
        ["qemu-img", "snapshot", "-l", "-U", str(disk)], capture_output=True, text=True, timeout=60
    ).stdout
    return [line.split()[1] for line in out.splitlines()[2:] if len(line.split()) > 1]


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def full_copy(source: Path, target: Path, how: str) -> float:
    """Copy ``source`` to ``target`` with ``cp`` or ``qemu-img convert`` and fsync the copy
    (a snapshot must survive a power cut, so a copy-based snapshot pays for that too);
    return the wall time. ``target`` is removed first and left for the caller to remove."""
    target.unlink(missing_ok=True)
    args = {
        "cp": ["cp", "--sparse=always", str(source), str(target)],
        "convert": ["qemu-img", "convert", "-O", "qcow2", str(source), str(target)],
    }[how]
    start = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True, timeout=3600)
    _fsync(target)
    return time.perf_counter() - start
