"""Change records of disks: persistent QEMU dirty bitmaps, one per disk per backup chain.

A backup's checkpoint is a persistent, enabled dirty bitmap started at the backup's point in
time, named ``vpsd-changes.<checkpoint>.<disk size>``: QEMU (and ``qemu-img``, ``qemu-io``,
``qemu-nbd``, which open disks through the same block layer) sets a bit for every cluster
written after that point, and qcow2 keeps the bitmap in the image across stops and starts.
The next backup reads only the clusters set. It is trusted only when all of these hold:

- it is there: vpsd removes it before any change the bitmap would not see (a snapshot or
  backup restore), a disk made anew has none, and one removed by hand is gone;
- it is consistent: a QEMU killed while it had the image open leaves the bitmap flagged
  ``in-use`` in the file, and QEMU loads it ``inconsistent``;
- it is recording: a bitmap disabled by hand misses writes;
- the disk has the size written in its name: a resize changes what the disk holds beyond
  the old end.

Anything else named ``vpsd-changes.*`` is garbage of an interrupted backup and is removed.
``vpsd-frozen.*`` bitmaps are temporary, in-memory copies of a record taken at a backup
point (an NBD export needs a bitmap that no longer changes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vpsd.core import commands
from vpsd.hypervisor.base import DriverError
from vpsd.hypervisor.qemu import img, nbd

PREFIX = "vpsd-changes."
FROZEN_PREFIX = "vpsd-frozen."
_CHECKPOINT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")
RESET_MARKER = "changes-reset"
"""A file in the server's folder saying why its change records were dropped, read by the
next backup to explain why it reads everything."""


def check_checkpoint(checkpoint: str) -> str:
    """Return ``checkpoint`` if it is a safe checkpoint name, else raise ``DriverError``."""
    if not _CHECKPOINT.fullmatch(checkpoint):
        raise DriverError(f"invalid checkpoint name {checkpoint!r}")
    return checkpoint


def record_name(checkpoint: str, size_bytes: int) -> str:
    """The bitmap recording changes since ``checkpoint`` on a disk of ``size_bytes``."""
    return f"{PREFIX}{check_checkpoint(checkpoint)}.{size_bytes}"


def frozen_name(checkpoint: str) -> str:
    """The temporary copy of a record taken at ``checkpoint``'s backup point."""
    return f"{FROZEN_PREFIX}{check_checkpoint(checkpoint)}"


@dataclass(frozen=True, slots=True)
class Bitmap:
    """A dirty bitmap as QEMU or ``qemu-img info`` reports it."""

    name: str
    recording: bool
    consistent: bool


def of_image_info(info: dict[str, Any]) -> list[Bitmap]:
    """The bitmaps of a *stopped* disk from ``qemu-img info --output=json``: ``in-use`` in
    the file means the last program that had it open did not close it (killed)."""
    found = info.get("format-specific", {}).get("data", {}).get("bitmaps", [])
    return [
        Bitmap(
            str(item["name"]),
            recording="auto" in item.get("flags", []),
            consistent="in-use" not in item.get("flags", []),
        )
        for item in found
    ]


def of_block_node(node: dict[str, Any]) -> list[Bitmap]:
    """The bitmaps of a running VM's block node (``query-named-block-nodes``)."""
    return [
        Bitmap(
            str(item["name"]),
            recording=bool(item.get("recording")),
            consistent=not item.get("inconsistent") and not item.get("busy"),
        )
        for item in node.get("dirty-bitmaps", [])
    ]


def judge(bitmaps: list[Bitmap], since: str | None, size_bytes: int) -> tuple[str | None, str]:
    """The record of ``since`` that can be trusted on a disk of ``size_bytes`` (its bitmap
    name), or None and why not (words for the server's owner)."""
    if since is None:
        return None, ""
    prefix = f"{PREFIX}{check_checkpoint(since)}."
    for bitmap in bitmaps:
        if not bitmap.name.startswith(prefix):
            continue
        if not bitmap.consistent:
            return None, "its record of changes was left incomplete (the VM was killed)"
        if not bitmap.recording:
            return None, "its record of changes was paused"
        if bitmap.name[len(prefix) :] != str(size_bytes):
            return None, "the disk was resized"
        return bitmap.name, ""
    return None, "it has no record of changes since the previous backup"


def ours(bitmaps: list[Bitmap]) -> list[str]:
    """The names of vpsd's bitmaps among ``bitmaps``."""
    return [b.name for b in bitmaps if b.name.startswith((PREFIX, FROZEN_PREFIX))]


# -- stopped disks (qemu-img) ---------------------------------------------------------------


def remove_all(path: Path, *, timeout: float) -> None:
    """Remove every vpsd bitmap of a stopped disk."""
    for name in ours(of_image_info(img.info(path, timeout=timeout))):
        img.bitmap_remove(path, name, timeout=timeout)


def dirty_extents_stopped(path: Path, name: str, *, timeout: float) -> tuple[tuple[int, int], ...]:
    """The dirty runs of bitmap ``name`` of a stopped disk, through a read-only ``qemu-nbd``."""
    return _dirty(
        [
            nbd.NBDINFO,
            f"--map=qemu:dirty-bitmap:{name}",
            "--",
            "[",
            "qemu-nbd",
            "--read-only",
            "--format=qcow2",
            f"--bitmap={name}",
            str(path),
            "]",
        ],
        timeout=timeout,
    )


def dirty_extents_exported(
    socket: Path, export: str, name: str, *, timeout: float
) -> tuple[tuple[int, int], ...]:
    """The dirty runs of bitmap ``name`` on an NBD export (a running VM's own server)."""
    return _dirty(
        [nbd.NBDINFO, f"--map=qemu:dirty-bitmap:{name}", nbd.uri(socket, export)],
        timeout=timeout,
    )


def _dirty(args: list[str], *, timeout: float) -> tuple[tuple[int, int], ...]:
    runs: list[tuple[int, int]] = []
    for line in commands.run(args, timeout=timeout).stdout.splitlines():
        fields = line.split(None, 3)
        if len(fields) < 3 or not int(fields[2]) & 1:
            continue
        offset, length = int(fields[0]), int(fields[1])
        if runs and runs[-1][0] + runs[-1][1] == offset:
            runs[-1] = (runs[-1][0], runs[-1][1] + length)
        else:
            runs.append((offset, length))
    return tuple(runs)


# -- why a chain broke ----------------------------------------------------------------------


def note_reset(folder: Path, reason: str) -> None:
    """Record why the server's change records are being dropped (before dropping them)."""
    (folder / RESET_MARKER).write_text(reason + "\n")


def reset_reason(folder: Path) -> str | None:
    """Why the change records were last dropped, if vpsd dropped them."""
    try:
        return (folder / RESET_MARKER).read_text().strip() or None
    except OSError:
        return None


def clear_reset(folder: Path) -> None:
    """A new record was started: the reason no longer applies."""
    (folder / RESET_MARKER).unlink(missing_ok=True)
