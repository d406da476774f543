"""A read-only FUSE filesystem served from Python threads, speaking the kernel's protocol on
``/dev/fuse`` directly (no libfuse, no build dependency).

Backups use it to show restic a disk as a tree of files whose metadata the caller chooses
(``backups/chunks.py``). Only what a read-only tree needs is answered: lookup, getattr,
open, read, readdir(plus), statfs, release; everything else gets ``ENOSYS`` (for xattrs,
the kernel then answers ``EOPNOTSUPP`` itself, which restic takes as "none"). Attributes
and entries are cached by the kernel for the mount's life: a tree never changes while
mounted.

Mounting takes ``mount(2)`` when this process may (root), else the setuid ``fusermount3``
or ``fusermount`` helper, which passes the ``/dev/fuse`` descriptor back over a socket. The
mount is private to the user who made it (no ``allow_other``). A vpsd killed while a tree is
mounted leaves a dead mount point: ``unmount_stale`` detaches it.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import shutil
import socket
import stat
import struct
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

ROOT_INODE = 1
CACHE_SECONDS = 24 * 3600
"""How long the kernel may keep entries and attributes: the tree is fixed while mounted."""
MAX_PAGES = 256
"""Largest read request the kernel sends, in 4 KiB pages (1 MiB)."""
READ_BUFFER = 128 * 1024
"""Bytes per request read from /dev/fuse: requests here are small (no writes)."""

# Opcodes (linux/fuse.h).
_LOOKUP, _FORGET, _GETATTR = 1, 2, 3
_OPEN, _READ, _STATFS, _RELEASE = 14, 15, 17, 18
_FLUSH, _INIT, _OPENDIR, _READDIR, _RELEASEDIR = 25, 26, 27, 28, 29
_ACCESS, _INTERRUPT, _DESTROY, _BATCH_FORGET, _READDIRPLUS = 34, 36, 38, 42, 44
_NO_REPLY = frozenset({_FORGET, _INTERRUPT, _BATCH_FORGET})

# INIT flags we use, when the kernel offers them.
_ASYNC_READ = 1 << 0
_DO_READDIRPLUS = 1 << 13
_PARALLEL_DIROPS = 1 << 18
_MAX_PAGES_FLAG = 1 << 22
_WANTED = _ASYNC_READ | _DO_READDIRPLUS | _PARALLEL_DIROPS | _MAX_PAGES_FLAG

_IN_HEADER = struct.Struct("<IIQQIIIHH")
_OUT_HEADER = struct.Struct("<IiQ")
_ATTR = struct.Struct("<QQQQQQIIIIIIIIII")
_ENTRY = struct.Struct("<QQQQII")
_ATTR_OUT = struct.Struct("<QII")
_OPEN_OUT = struct.Struct("<QII")
_READ_IN = struct.Struct("<QQII")
_DIRENT = struct.Struct("<QQII")
_INIT_IN = struct.Struct("<IIII")
_INIT_OUT = struct.Struct("<IIIIHHIIHHI28x")
_STATFS_OUT = struct.Struct("<QQQQQIII28x")
_DT_DIR, _DT_REG = 4, 8
_DIRECT_IO = 1 << 0
"""FOPEN_DIRECT_IO: each read() reaches us at the reader's size (restic's 512 KiB) instead
of 128 KiB readahead pieces, and the bytes skip the page cache (read once, never again)."""
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MNT_DETACH = 2


class FuseError(OSError):
    """FUSE cannot be used here (no /dev/fuse, no permission to mount) or the mount failed."""


@dataclass(frozen=True, slots=True)
class Attributes:
    """What ``stat`` shows of a file or directory: all times are ``mtime_ns``."""

    inode: int
    is_dir: bool
    size: int
    mtime_ns: int


class Tree(Protocol):
    """A fixed tree of directories and files; inode ``ROOT_INODE`` is its root.

    ``read`` may be called from several threads at once; an exception it raises becomes
    ``EIO`` for the reader and is kept in ``FuseMount.errors``.
    """

    def attributes(self, inode: int) -> Attributes | None:
        """The node's attributes, None when there is no such inode."""
        ...

    def lookup(self, parent: int, name: bytes) -> int | None:
        """The inode of ``name`` in directory ``parent``, None when absent."""
        ...

    def entries(self, directory: int) -> Sequence[tuple[bytes, int]]:
        """The directory's (name, inode) pairs in a stable order."""
        ...

    def read(self, inode: int, offset: int, size: int) -> bytes | bytearray | memoryview:
        """Up to ``size`` bytes of the file from ``offset`` (short only at its end)."""
        ...


class FuseMount:
    """``tree`` mounted read-only at ``mountpoint`` for the ``with`` block, served by
    ``threads`` threads. ``errors`` lists the exceptions ``tree.read`` raised."""

    def __init__(self, tree: Tree, mountpoint: Path, *, threads: int = 4) -> None:
        self.tree = tree
        self.mountpoint = mountpoint
        self.threads = threads
        self.errors: list[BaseException] = []
        self._fd = -1
        self._workers: list[threading.Thread] = []
        self._with_helper = False
        self._uid, self._gid = os.getuid(), os.getgid()

    def __enter__(self) -> FuseMount:
        self._fd, self._with_helper = _mount(self.mountpoint)
        try:
            for index in range(self.threads):
                worker = threading.Thread(
                    target=self._serve, name=f"fuse-{self.mountpoint.name}-{index}", daemon=True
                )
                worker.start()
                self._workers.append(worker)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *_: object) -> None:
        _unmount(self.mountpoint, self._with_helper)
        # Closing the descriptor aborts the connection; the workers' reads then fail.
        with contextlib.suppress(OSError):
            os.close(self._fd)
        for worker in self._workers:
            worker.join(timeout=10.0)
        self._workers.clear()

    # -- the request loop --------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            try:
                request = os.read(self._fd, READ_BUFFER)
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    continue  # the request was interrupted before we read it
                return  # ENODEV after unmount, EBADF after close
            if len(request) < _IN_HEADER.size:
                continue
            _, opcode, unique, inode, *_rest = _IN_HEADER.unpack_from(request)
            body = memoryview(request)[_IN_HEADER.size :]
            try:
                reply = self._answer(opcode, inode, body)
            except OSError as exc:
                reply = exc.errno or errno.EIO
            except Exception as exc:  # a bug or a failed read: the reader sees EIO
                log.warning("FUSE request %d on inode %d failed: %r", opcode, inode, exc)
                self.errors.append(exc)
                reply = errno.EIO
            if opcode in _NO_REPLY:
                continue
            self._reply(unique, reply)
            if opcode == _DESTROY:
                return

    def _reply(self, unique: int, reply: int | Sequence[bytes | bytearray | memoryview]) -> None:
        if isinstance(reply, int):
            parts: Sequence[bytes | bytearray | memoryview] = ()
            error = -reply
        else:
            parts, error = reply, 0
        length = _OUT_HEADER.size + sum(len(part) for part in parts)
        try:
            os.writev(self._fd, [_OUT_HEADER.pack(length, error, unique), *parts])
        except OSError as exc:
            # ENOENT: the kernel gave up on the request (the reader was interrupted).
            if exc.errno not in (errno.ENOENT, errno.ENODEV, errno.EBADF):
                raise

    def _answer(
        self, opcode: int, inode: int, body: memoryview
    ) -> int | list[bytes | bytearray | memoryview]:
        if opcode == _INIT:
            return [self._init(body)]
        if opcode == _LOOKUP:
            child = self.tree.lookup(inode, bytes(body).split(b"\0", 1)[0])
            return errno.ENOENT if child is None else [self._entry(child)]
        if opcode == _GETATTR:
            return [_ATTR_OUT.pack(CACHE_SECONDS, 0, 0) + self._attr(inode)]
        if opcode in (_OPEN, _OPENDIR):
            (flags,) = struct.unpack_from("<I", body)
            if flags & os.O_ACCMODE != os.O_RDONLY:
                return errno.EROFS
            return [_OPEN_OUT.pack(0, _DIRECT_IO if opcode == _OPEN else 0, 0)]
        if opcode == _READ:
            _, offset, size, _ = _READ_IN.unpack_from(body)
            return [self.tree.read(inode, offset, size)]
        if opcode in (_READDIR, _READDIRPLUS):
            _, offset, size, _ = _READ_IN.unpack_from(body)
            return [self._directory(inode, offset, size, plus=opcode == _READDIRPLUS)]
        if opcode == _STATFS:
            return [_STATFS_OUT.pack(0, 0, 0, 0, 0, 4096, 255, 4096)]
        if opcode in (_RELEASE, _RELEASEDIR, _FLUSH, _ACCESS, _DESTROY):
            return []
        if opcode in _NO_REPLY:
            return []
        return errno.ENOSYS

    def _init(self, body: memoryview) -> bytes:
        major, minor, max_readahead, offered = _INIT_IN.unpack_from(body)
        if major != 7:
            raise FuseError(f"unsupported FUSE protocol {major}.{minor}")
        return _INIT_OUT.pack(
            7,
            min(minor, 31),
            min(max_readahead, MAX_PAGES * 4096),
            offered & _WANTED,
            16,  # max_background
            12,  # congestion_threshold
            4096,  # max_write: nothing is ever written
            1,  # time_gran: nanoseconds
            MAX_PAGES,
            0,
            0,
        )

    def _attr(self, inode: int) -> bytes:
        found = self.tree.attributes(inode)
        if found is None:
            raise FileNotFoundError(errno.ENOENT, "no such inode")
        seconds, nanoseconds = divmod(found.mtime_ns, 1_000_000_000)
        mode = (stat.S_IFDIR | 0o500) if found.is_dir else (stat.S_IFREG | 0o400)
        return _ATTR.pack(
            found.inode,
            found.size,
            -(-found.size // 512),
            seconds, seconds, seconds,
            nanoseconds, nanoseconds, nanoseconds,
            mode,
            2 if found.is_dir else 1,
            self._uid,
            self._gid,
            0,
            4096,
            0,
        )  # fmt: skip

    def _entry(self, inode: int) -> bytes:
        return _ENTRY.pack(inode, 0, CACHE_SECONDS, CACHE_SECONDS, 0, 0) + self._attr(inode)

    def _directory(self, inode: int, offset: int, size: int, *, plus: bool) -> bytes:
        found = self.tree.attributes(inode)
        if found is None or not found.is_dir:
            raise NotADirectoryError(errno.ENOTDIR, "not a directory")
        entries = self.tree.entries(inode)
        out = bytearray()
        for index in range(offset, len(entries)):
            name, child = entries[index]
            child_attributes = self.tree.attributes(child)
            kind = _DT_DIR if child_attributes is not None and child_attributes.is_dir else _DT_REG
            padded = name + b"\0" * (-len(name) % 8)
            record = _DIRENT.pack(child, index + 1, len(name), kind) + padded
            if plus:
                record = self._entry(child) + record
            if len(out) + len(record) > size:
                break
            out += record
        return bytes(out)


# -- mounting -------------------------------------------------------------------------------


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _mount(mountpoint: Path) -> tuple[int, bool]:
    """Open /dev/fuse and mount it at ``mountpoint``: (descriptor, mounted by the helper)."""
    try:
        fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise FuseError(f"FUSE is not available on this host: {exc}") from exc
    options = (
        f"fd={fd},rootmode={stat.S_IFDIR:o},user_id={os.getuid()},group_id={os.getgid()},"
        "default_permissions"
    )
    flags = _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
    result = _libc().mount(b"vpsd", bytes(mountpoint), b"fuse.vpsd", flags, options.encode())
    if result == 0:
        return fd, False
    error = ctypes.get_errno()
    os.close(fd)
    if error not in (errno.EPERM, errno.EACCES):
        raise FuseError(f"cannot mount FUSE at {mountpoint}: {os.strerror(error)}")
    return _mount_with_helper(mountpoint), True


def _helper() -> str | None:
    return shutil.which("fusermount3") or shutil.which("fusermount")


def _mount_with_helper(mountpoint: Path) -> int:
    """Mount through the setuid ``fusermount``: it sends the /dev/fuse descriptor back
    over the socket named by ``_FUSE_COMMFD``."""
    helper = _helper()
    if helper is None:
        raise FuseError("FUSE mounts need root or fusermount3 (Debian package fuse3)")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        result = subprocess.run(
            [
                helper,
                "-o",
                "ro,nosuid,nodev,noexec,default_permissions,fsname=vpsd,subtype=vpsd",
                "--",
                str(mountpoint),
            ],
            env={**os.environ, "_FUSE_COMMFD": str(theirs.fileno())},
            pass_fds=(theirs.fileno(),),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise FuseError(f"{helper} failed: {result.stderr.strip()}")
        fds = array.array("i")
        _, ancillary, _, _ = ours.recvmsg(1, socket.CMSG_LEN(fds.itemsize))
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: fds.itemsize])
    if not fds:
        raise FuseError(f"{helper} sent no FUSE descriptor")
    return fds[0]


def _unmount(mountpoint: Path, with_helper: bool) -> None:
    """Detach the mount (lazily: a reader still inside finishes on a dead mount)."""
    if with_helper:
        helper = _helper()
        if helper is not None:
            subprocess.run(
                [helper, "-u", "-z", "--", str(mountpoint)],
                capture_output=True,
                timeout=30,
                check=False,
            )
        return
    if _libc().umount2(bytes(mountpoint), _MNT_DETACH) != 0:
        error = ctypes.get_errno()
        if error not in (errno.EINVAL, errno.ENOENT):  # not mounted (any more)
            log.warning("cannot unmount %s: %s", mountpoint, os.strerror(error))


def is_mounted(path: Path) -> bool:
    """True while a filesystem (live or dead) is mounted at ``path``."""
    target = os.fsencode(path.absolute())
    with contextlib.suppress(OSError), open("/proc/self/mountinfo", "rb") as table:  # noqa: PTH123
        for line in table:
            fields = line.split()
            if len(fields) > 4 and fields[4].replace(b"\\040", b" ") == target:
                return True
    return False


def unmount_stale(folder: Path) -> None:
    """Detach and remove the mount points below ``folder`` whose process is gone (left by a
    killed vpsd); those of live processes, this one's included, are left alone (a mount
    point's name starts with its process's pid)."""
    if not folder.is_dir():
        return
    for mountpoint in folder.iterdir():
        owner = mountpoint.name.split("-", 1)[0]
        if owner.isdigit() and _alive(int(owner)):
            continue
        if is_mounted(mountpoint):
            _unmount(mountpoint, with_helper=os.getuid() != 0)
        with contextlib.suppress(OSError):
            mountpoint.rmdir()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def mounted(tree: Tree, folder: Path, *, threads: int = 4) -> Iterator[FuseMount]:
    """Mount ``tree`` at a new folder below ``folder`` (0700, named after this process) for
    the ``with`` block; the folder is removed afterwards."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    unmount_stale(folder)
    mountpoint = Path(_mkdtemp(folder))
    try:
        with FuseMount(tree, mountpoint, threads=threads) as mount:
            yield mount
    finally:
        with contextlib.suppress(OSError):
            mountpoint.rmdir()


def _mkdtemp(folder: Path) -> str:
    return tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=folder)
