"""Typed wrappers around ``qemu-img`` (always through ``commands.run``, JSON output parsed).

``force_share`` adds ``-U``: needed to *read* an image a running VM holds locked. It is
never used for writes, which QEMU must do itself (over QMP) while the VM runs. A command
that finds the image held by another process waits for it (``LOCK_WAIT``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from vpsd.core import commands
from vpsd.hypervisor.base import DriverError
from vpsd.hypervisor.qemu import qcow2

QEMU_IMG = "qemu-img"
LOCK_WAIT = 60.0
"""Seconds a command waits for an image another process holds before failing.

``qemu-img`` runs in its own session (see ``commands.run``), so a vpsd killed mid-command
leaves it running; the rerun of the interrupted operation must wait for it to finish.
"""
_LOCK_POLL = 0.2
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def check_tag(tag: str) -> str:
    """Return ``tag`` if it is a safe snapshot name, else raise ``DriverError``.

    qemu-img looks snapshots up by id *or* name, so an all-digit tag could hit another
    snapshot's id; commas would be parsed as option separators by ``-l snapshot.name=``.
    """
    if not _TAG.fullmatch(tag) or tag.isdigit():
        raise DriverError(
            f"invalid snapshot tag {tag!r}: use 1-128 letters, digits, '.', '_', ':' or '-', "
            "starting with a letter or digit and not all digits"
        )
    return tag


_T = TypeVar("_T")


def _is_lock_conflict(error: commands.CommandError) -> bool:
    return 'Failed to get "write" lock' in error.stderr or (
        'Failed to get shared "write" lock' in error.stderr
    )


def _waiting_for_lock(call: Callable[[], _T]) -> _T:
    """Run ``call``; while it fails because another process holds the image, retry it for
    up to ``LOCK_WAIT`` seconds (the last failure is raised after that)."""
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            return call()
        except commands.CommandError as error:
            if not _is_lock_conflict(error) or time.monotonic() >= deadline:
                raise
        time.sleep(_LOCK_POLL)


def _run(args: list[str], *, timeout: float) -> None:
    _waiting_for_lock(lambda: commands.run(args, timeout=timeout))


def _run_json(args: list[str], *, timeout: float) -> Any:
    return _waiting_for_lock(lambda: commands.run_json(args, timeout=timeout))


def create(path: Path, size_bytes: int, *, backing: Path | None = None, timeout: float) -> None:
    """Create a qcow2 image of ``size_bytes`` at ``path``, atomically.

    With ``backing``, the image is a copy-on-write overlay of that qcow2 file (which must
    never change afterwards), recorded by a path relative to ``path``'s folder so the data
    dir can move. The image is built under a temporary name and renamed into place, so a
    crash never leaves a half-written disk at ``path``. Raises ``DriverError`` if ``path``
    exists, or if ``backing`` is larger than ``size_bytes``.
    """
    if path.exists():
        raise DriverError(f"disk {path} already exists")
    args = [QEMU_IMG, "create", "-q", "-f", "qcow2"]
    if backing is not None:
        if virtual_size(backing) > size_bytes:
            raise DriverError(f"image {backing.parent.name} is larger than the disk")
        args += ["-b", os.path.relpath(backing, path.parent), "-F", "qcow2"]
    partial = path.with_name(f".{path.name}.partial")
    partial.unlink(missing_ok=True)
    try:
        commands.run([*args, str(partial), str(size_bytes)], timeout=timeout, cwd=path.parent)
        _fsync(partial)
        partial.replace(path)
        _fsync(path.parent)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def resize(path: Path, size_bytes: int, *, timeout: float) -> None:
    """Grow the qcow2 image at ``path`` (not in use) to ``size_bytes``."""
    _run([QEMU_IMG, "resize", "-q", "-f", "qcow2", str(path), str(size_bytes)], timeout=timeout)


def info(path: Path, *, force_share: bool = False, timeout: float) -> dict[str, Any]:
    """``qemu-img info --output=json`` of one image."""
    args = [QEMU_IMG, "info", "--output=json", *(["-U"] if force_share else []), str(path)]
    result: dict[str, Any] = _run_json(args, timeout=timeout)
    return result


def snapshot_names(path: Path, *, force_share: bool = False, timeout: float) -> list[str]:
    """The internal snapshot names of one image, oldest first."""
    snapshots = info(path, force_share=force_share, timeout=timeout).get("snapshots", [])
    return [str(snapshot["name"]) for snapshot in snapshots]


def snapshot_create(path: Path, tag: str, *, timeout: float) -> None:
    """``qemu-img snapshot -c``: take internal snapshot ``tag`` (image must not be in use)."""
    _run([QEMU_IMG, "snapshot", "-c", check_tag(tag), str(path)], timeout=timeout)


def snapshot_apply(path: Path, tag: str, *, timeout: float) -> None:
    """``qemu-img snapshot -a``: revert the image to ``tag`` (image must not be in use)."""
    _run([QEMU_IMG, "snapshot", "-a", check_tag(tag), str(path)], timeout=timeout)


def snapshot_delete(path: Path, tag: str, *, timeout: float) -> None:
    """``qemu-img snapshot -d``: delete ``tag`` (image must not be in use)."""
    _run([QEMU_IMG, "snapshot", "-d", check_tag(tag), str(path)], timeout=timeout)


def bitmap_add(path: Path, name: str, *, timeout: float) -> None:
    """``qemu-img bitmap --add``: a persistent, enabled dirty bitmap (image not in use)."""
    _run([QEMU_IMG, "bitmap", "--add", "-f", "qcow2", str(path), name], timeout=timeout)


def bitmap_remove(path: Path, name: str, *, timeout: float) -> None:
    """``qemu-img bitmap --remove`` (image not in use); inconsistent bitmaps too."""
    _run([QEMU_IMG, "bitmap", "--remove", "-f", "qcow2", str(path), name], timeout=timeout)


def measure_required(
    path: Path | None, *, tag: str | None = None, size_bytes: int | None = None,
    force_share: bool = False, timeout: float,
) -> int:  # fmt: skip
    """``qemu-img measure -O qcow2``: bytes a qcow2 copy of ``path`` (at snapshot ``tag``),
    or of an empty image of ``size_bytes`` when ``path`` is None, would need."""
    args = [QEMU_IMG, "measure", "--output=json", "-O", "qcow2"]
    if path is None:
        args += ["--size", str(size_bytes)]
    else:
        if tag is not None:
            args += ["-l", f"snapshot.name={check_tag(tag)}"]
        args += [*(["-U"] if force_share else []), str(path)]
    return int(_run_json(args, timeout=timeout)["required"])


def captured_bytes(path: Path, tag: str, *, force_share: bool = False, timeout: float) -> int:
    """Allocated guest data (bytes, cluster granular) that snapshot ``tag`` of ``path`` holds,
    its backing image's data it still reads included.

    Read from the qcow2 tables in-process (``qcow2.allocated_bytes``); for a layout that
    reader does not handle, ``qemu-img measure``, whose answer is data + qcow2 metadata,
    where the metadata part depends only on the virtual size: subtracting the answer for an
    empty image of that size leaves the data. Both walk metadata only, never the data.
    """
    try:
        return qcow2.allocated_bytes(path, tag)
    except (qcow2.Unsupported, OSError, ValueError, struct.error):
        full = measure_required(path, tag=tag, force_share=force_share, timeout=timeout)
        return max(0, full - _empty_required(virtual_size(path), timeout=timeout))


QCOW2_MAGIC = b"QFI\xfb"


def virtual_size(path: Path) -> int:
    """The guest-visible size of a qcow2 image, read from its header (no process spawned).

    The header's ``size`` field (big-endian, bytes 24-31) is what QEMU itself reads; a
    running QEMU rewrites it on resize, so reading it while the VM runs is safe.
    """
    with path.open("rb") as image:
        header = image.read(32)
    if len(header) < 32 or header[:4] != QCOW2_MAGIC:
        raise DriverError(f"{path.name} is not a qcow2 image")
    return int.from_bytes(header[24:32], "big")


@functools.lru_cache(maxsize=64)
def _empty_required(size_bytes: int, *, timeout: float) -> int:
    # Depends only on the virtual size (and QEMU's version): one measurement per size.
    return measure_required(None, size_bytes=size_bytes, timeout=timeout)


def check(path: Path, *, timeout: float) -> dict[str, Any]:
    """``qemu-img check --output=json``; raises ``CommandError`` when the image is damaged."""
    result: dict[str, Any] = _run_json(
        [QEMU_IMG, "check", "--output=json", str(path)], timeout=timeout
    )
    return result


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # some filesystems refuse fsync on directories
            os.fsync(fd)
    finally:
        os.close(fd)
