"""Disks as raw byte streams, for backups: read an internal snapshot out, write a disk in.

Both go through NBD: ``qemu-nbd`` serves the image and ``nbdcopy`` (libnbd) copies between
it and a pipe, so the bytes never pass through Python and sparse areas cost nothing on disk.

Reading a running VM's disk is safe although QEMU holds it open: an internal snapshot's
clusters are never written in place (qcow2 copies a cluster whose refcount is above one
before writing it), and its tables change only when a snapshot is taken or deleted, which
vpsd never does on a server while a backup of it runs (one operation per server at a time).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from vpsd.core import commands
from vpsd.hypervisor.qemu import img

NBDCOPY = "nbdcopy"
QEMU_NBD = "qemu-nbd"


def image_options(path: Path) -> str:
    """``--image-opts`` reading a qcow2 read-only next to the VM that holds it."""
    # locking=off: the running VM holds the image's write lock; the snapshot is read-only.
    return f"driver=qcow2,file.driver=file,file.filename={path},file.locking=off"


@contextmanager
def snapshot_reader(disk: Path, tag: str, *, timeout: float) -> Iterator[IO[bytes]]:
    """The raw bytes of ``disk`` as of its internal snapshot ``tag``, as a pipe to read.

    Raises ``CommandError`` on leaving when the copy failed (a short stream is an error).
    """
    img.check_tag(tag)
    args = [
        NBDCOPY,
        "--",
        "[",
        QEMU_NBD,
        "--read-only",
        f"--load-snapshot=snapshot.name={tag}",
        "--image-opts",
        image_options(disk),
        "]",
        "-",
    ]
    with commands.streaming(args, stdout=subprocess.PIPE, timeout=timeout) as process:
        assert process.stdout is not None
        yield process.stdout


@contextmanager
def disk_writer(disk: Path, *, timeout: float) -> Iterator[IO[bytes]]:
    """A pipe whose bytes overwrite ``disk`` from its start (the image must not be in use).

    Runs of zeros become qcow2 zero clusters, so they take no space and hide what a backing
    image holds there. Raises ``CommandError`` on leaving when the copy failed.
    """
    args = [
        NBDCOPY,
        "--",
        "-",
        "[",
        QEMU_NBD,
        "--format=qcow2",
        "--discard=unmap",
        "--detect-zeroes=unmap",
        str(disk),
        "]",
    ]
    with commands.streaming(args, stdin=subprocess.PIPE, timeout=timeout) as process:
        assert process.stdin is not None
        yield process.stdin


def clone_snapshot(
    source: Path, tag: str, target: Path, *, backing: Path | None, timeout: float
) -> None:
    """Write ``target`` as a new qcow2 holding ``source``'s snapshot ``tag``.

    With ``backing`` (the image ``source`` is an overlay of), ``target`` is an overlay of it
    too and only what the server changed since its image is copied: the time taken grows
    with the server's own data, not with its disk's size.
    """
    img.check_tag(tag)
    args = [img.QEMU_IMG, "convert", "-U", "-l", f"snapshot.name={tag}", "-O", "qcow2"]
    if backing is not None:
        # Relative, as ``img.create`` records it, so that the data dir can move.
        args += ["-B", os.path.relpath(backing, target.parent), "-F", "qcow2"]
    commands.run(
        [*args, str(source.absolute()), str(target.absolute())], timeout=timeout, cwd=target.parent
    )
