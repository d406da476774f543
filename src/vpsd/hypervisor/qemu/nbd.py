"""A small NBD client: read an export's bytes at any offset, and map its extents.

Reads go over a socket of our own (fixed newstyle handshake, ``NBD_OPT_GO``, simple
replies), so a backup can fetch only the regions it needs straight into Python buffers; the
block-status maps (allocation, dirty bitmaps) come from libnbd's ``nbdinfo --map``, already
needed for ``nbdcopy``. Protocol: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vpsd.core import commands

NBDINFO = "nbdinfo"
_NBDMAGIC = b"NBDMAGIC"
_IHAVEOPT = 0x49484156454F5054
_OPT_REPLY_MAGIC = 0x3E889045565A9
_REQUEST_MAGIC = 0x25609513
_SIMPLE_REPLY_MAGIC = 0x67446698
_FLAG_FIXED_NEWSTYLE = 1
_FLAG_NO_ZEROES = 2
_OPT_GO = 7
_REP_ACK = 1
_REP_INFO = 3
_INFO_EXPORT = 0
_CMD_READ = 0
_CMD_DISC = 2
CONNECT_WAIT = 2.0
"""Seconds a connection waits for a server that has just started."""
MAX_REQUEST = 32 * 1024 * 1024
"""The largest read qemu-nbd serves in one request; longer reads are split."""


class NbdError(commands.CommandError):
    """The NBD server refused or broke the connection, or answered with an error."""

    def __init__(self, reason: str) -> None:
        super().__init__([NBDINFO], None, reason, reason)


def _connect(sock: socket.socket, socket_path: Path) -> None:
    """Connect, waiting a moment for a server that made its socket but is not listening yet."""
    deadline = time.monotonic() + CONNECT_WAIT
    while True:
        try:
            sock.connect(str(socket_path))
            return
        except (ConnectionRefusedError, FileNotFoundError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def _recv_exactly(sock: socket.socket, view: memoryview) -> None:
    while view:
        got = sock.recv_into(view)
        if got == 0:
            raise NbdError("the NBD server closed the connection")
        view = view[got:]


def _recv(sock: socket.socket, length: int) -> bytes:
    buffer = bytearray(length)
    _recv_exactly(sock, memoryview(buffer))
    return bytes(buffer)


class NbdConnection:
    """One connection to an export on a unix socket; not thread-safe (one per thread)."""

    def __init__(self, socket_path: Path, export: str = "", *, timeout: float = 60.0) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._cookie = 0
        try:
            _connect(self._sock, socket_path)
            self.size = self._handshake(export)
        except (OSError, struct.error) as exc:
            self._sock.close()
            raise NbdError(f"cannot open NBD export {export!r} at {socket_path}: {exc}") from exc
        except NbdError:
            self._sock.close()
            raise

    def _handshake(self, export: str) -> int:
        greeting = _recv(self._sock, 18)
        if greeting[:8] != _NBDMAGIC or struct.unpack(">Q", greeting[8:16])[0] != _IHAVEOPT:
            raise NbdError("not a fixed-newstyle NBD server")
        (server_flags,) = struct.unpack(">H", greeting[16:18])
        if not server_flags & _FLAG_FIXED_NEWSTYLE:
            raise NbdError("the NBD server lacks fixed newstyle negotiation")
        self._sock.sendall(struct.pack(">I", _FLAG_FIXED_NEWSTYLE | _FLAG_NO_ZEROES))
        name = export.encode()
        data = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
        self._sock.sendall(struct.pack(">QII", _IHAVEOPT, _OPT_GO, len(data)) + data)
        size: int | None = None
        while True:
            magic, _option, reply, length = struct.unpack(">QIII", _recv(self._sock, 20))
            payload = _recv(self._sock, length)
            if magic != _OPT_REPLY_MAGIC:
                raise NbdError("bad NBD option reply")
            if reply & 0x80000000:
                message = payload[4:].decode(errors="replace") if len(payload) > 4 else ""
                raise NbdError(f"the NBD server refused export {export!r}: {message}")
            if reply == _REP_INFO and struct.unpack(">H", payload[:2])[0] == _INFO_EXPORT:
                size = struct.unpack(">Q", payload[2:10])[0]
            elif reply == _REP_ACK:
                break
        if size is None:
            raise NbdError("the NBD server did not say the export's size")
        return size

    def read_into(self, offset: int, view: memoryview) -> None:
        """Fill ``view`` with the export's bytes from ``offset``; raises ``NbdError``."""
        try:
            while view:
                length = min(len(view), MAX_REQUEST)
                self._cookie += 1
                self._sock.sendall(
                    struct.pack(
                        ">IHHQQI", _REQUEST_MAGIC, 0, _CMD_READ, self._cookie, offset, length
                    )
                )
                magic, error, cookie = struct.unpack(">IIQ", _recv(self._sock, 16))
                if magic != _SIMPLE_REPLY_MAGIC or cookie != self._cookie:
                    raise NbdError("bad NBD reply")
                if error:
                    raise NbdError(f"the NBD server failed a read at {offset} (error {error})")
                _recv_exactly(self._sock, view[:length])
                view, offset = view[length:], offset + length
        except OSError as exc:
            raise NbdError(f"NBD read at {offset} failed: {exc}") from exc

    def close(self) -> None:
        """Say goodbye (``NBD_CMD_DISC``) and close the socket."""
        with contextlib.suppress(OSError):
            self._sock.sendall(struct.pack(">IHHQQI", _REQUEST_MAGIC, 0, _CMD_DISC, 0, 0, 0))
        self._sock.close()


class NbdReader:
    """Thread-safe reads of one export: each thread gets its own connection (the server
    must accept as many, e.g. ``qemu-nbd --shared``). Counts the bytes read."""

    def __init__(self, socket_path: Path, export: str = "", *, timeout: float = 60.0) -> None:
        self.socket_path = socket_path
        self.export = export
        self.timeout = timeout
        self.read_bytes = 0
        self._local = threading.local()
        self._connections: list[NbdConnection] = []
        self._lock = threading.Lock()
        self.size = self._connection().size

    def _connection(self) -> NbdConnection:
        connection: NbdConnection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = NbdConnection(self.socket_path, self.export, timeout=self.timeout)
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        return connection

    def read_into(self, offset: int, view: memoryview) -> None:
        """Fill ``view`` from ``offset`` (within the export)."""
        self._connection().read_into(offset, view)
        with self._lock:
            self.read_bytes += len(view)

    def close(self) -> None:
        """Close every thread's connection."""
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()


@dataclass(frozen=True, slots=True)
class Extent:
    """A run of bytes and its block-status flags (``base:allocation``: bit 0 hole, bit 1
    zero; ``qemu:dirty-bitmap:NAME``: bit 0 dirty)."""

    offset: int
    length: int
    flags: int


def uri(socket_path: Path, export: str = "") -> str:
    """The NBD URI of ``export`` on a unix socket, as libnbd's tools take it."""
    return f"nbd+unix:///{export}?socket={socket_path}"


def block_status(
    socket_path: Path, context: str, export: str = "", *, timeout: float
) -> Iterator[Extent]:
    """The extents of ``export`` in metadata ``context`` (``nbdinfo --map``), in order."""
    result = commands.run([NBDINFO, f"--map={context}", uri(socket_path, export)], timeout=timeout)
    for line in result.stdout.splitlines():
        fields = line.split(None, 3)
        if len(fields) >= 3:
            yield Extent(int(fields[0]), int(fields[1]), int(fields[2]))
