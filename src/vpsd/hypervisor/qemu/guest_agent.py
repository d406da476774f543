"""A small synchronous client for the QEMU guest agent (``org.qemu.guest_agent.0``).

The agent speaks line-delimited JSON over a virtio-serial port that QEMU exposes on a unix
socket. It has no greeting, and a previous client may have left a half-read answer in the
channel, so every session starts with ``guest-sync-delimited``: a 0xFF byte is sent to
reset the agent's parser, and everything before the agent's own 0xFF-prefixed answer with
our random id is discarded. Until the guest opens its port, reads simply block: every call
has a timeout, and a guest that does not answer is reported as ``GuestAgentUnavailable``.

Every byte on the channel comes from the guest, which may be hostile: an answer is at most
``MAX_REPLY_BYTES`` and the stale bytes skipped while syncing at most ``MAX_STALE_BYTES``.
Beyond either, the session is closed at once with a ``GuestAgentError``, so a guest that
floods costs a bounded amount of memory and no waiting; each byte is looked at once.
"""

from __future__ import annotations

import json
import secrets
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

from vpsd.hypervisor.base import DriverError

SYNC_BYTE = b"\xff"
MIB = 1024 * 1024
MAX_REPLY_BYTES = MIB
"""The longest answer taken from an agent (vpsd's largest, an 8 KiB file read, is ~11 KiB)."""
MAX_STALE_BYTES = 4 * MIB
"""The most skipped while syncing: a few answers an earlier client left unread."""
_RECEIVE_BYTES = 65536


class GuestAgentError(DriverError):
    """The agent answered a command with an error (``desc`` is its description)."""


class GuestAgentUnavailable(GuestAgentError):
    """No agent answered: the guest has not booted (yet), has no agent, or is hung."""


class GuestAgent:
    """One session with a guest's agent; use as a context manager.

    ``timeout`` bounds connecting and the initial sync; ``execute`` takes its own.
    """

    def __init__(self, socket_path: Path, *, timeout: float = 2.0) -> None:
        self._path = socket_path
        self._timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = bytearray()
        self._scanned = 0
        """How much of ``_buffer`` is known to hold no newline."""
        self._received = 0
        """Bytes received in this session."""

    def __enter__(self) -> GuestAgent:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def connect(self) -> None:
        """Connect and sync; raises ``GuestAgentUnavailable`` if the agent does not answer."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self._timeout)
        try:
            sock.connect(str(self._path))
        except OSError as exc:
            sock.close()
            raise GuestAgentUnavailable(f"no guest agent socket at {self._path}: {exc}") from exc
        self._sock = sock
        try:
            self._sync()
        except BaseException:
            self.close()
            raise

    def execute(
        self, command: str, arguments: dict[str, Any] | None = None, *, timeout: float = 10.0
    ) -> Any:
        """Run one agent command and return its ``return`` value.

        Raises ``GuestAgentError`` when the agent refuses it, ``GuestAgentUnavailable`` when
        no answer arrives within ``timeout`` seconds.
        """
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        self._send(json.dumps(request).encode() + b"\n")
        reply = self._read_reply(time.monotonic() + timeout, command)
        if "error" in reply:
            desc = reply["error"].get("desc", str(reply["error"]))
            raise GuestAgentError(f"guest agent refused {command}: {desc}")
        return reply.get("return")

    def close(self) -> None:
        """Close the connection (the agent keeps running)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buffer.clear()
        self._scanned = 0

    def _sync(self) -> None:
        token = secrets.randbelow(2**31)
        request = {"execute": "guest-sync-delimited", "arguments": {"id": token}}
        self._send(SYNC_BYTE + json.dumps(request).encode() + b"\n")
        deadline = time.monotonic() + self._timeout
        before = self._received
        while True:
            if self._received - before > MAX_STALE_BYTES:
                self._cut_off(f"sent more than {MAX_STALE_BYTES // MIB} MiB before syncing")
            # Everything up to the agent's 0xFF is a stale answer to an earlier client.
            marker = self._buffer.find(SYNC_BYTE)
            if marker >= 0:
                self._discard(marker + 1)
                reply = self._read_reply(deadline, "guest-sync-delimited")
                if reply.get("return") == token:
                    return
                continue
            self._discard(len(self._buffer))
            self._receive(deadline, "guest-sync-delimited")

    def _send(self, data: bytes) -> None:
        if self._sock is None:
            raise GuestAgentUnavailable("the session with the guest agent was closed")
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise GuestAgentUnavailable(f"guest agent at {self._path}: {exc}") from exc

    def _read_reply(self, deadline: float, command: str) -> dict[str, Any]:
        while (end := self._buffer.find(b"\n", self._scanned)) < 0:
            self._scanned = len(self._buffer)
            if self._scanned > MAX_REPLY_BYTES:
                self._cut_off(f"sent more than {MAX_REPLY_BYTES // MIB} MiB in answer to {command}")
            self._receive(deadline, command)
        line = bytes(self._buffer[:end])
        self._discard(end + 1)
        try:
            reply = json.loads(line.strip(SYNC_BYTE + b" \r"))
        except ValueError as exc:
            raise GuestAgentError(f"guest agent sent invalid JSON for {command}") from exc
        if not isinstance(reply, dict):
            raise GuestAgentError(f"guest agent sent an unexpected answer to {command}")
        return reply

    def _discard(self, count: int) -> None:
        """Drop the first ``count`` bytes of the buffer (they have been read)."""
        del self._buffer[:count]
        self._scanned = max(0, self._scanned - count)

    def _cut_off(self, what: str) -> NoReturn:
        """Close a session the agent flooded: its channel is out of step for good."""
        self.close()
        raise GuestAgentError(f"the guest agent {what}; the session was closed")

    def _receive(self, deadline: float, command: str) -> None:
        if self._sock is None:
            raise GuestAgentUnavailable(f"the session with the guest agent was closed ({command})")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise GuestAgentUnavailable(f"the guest agent did not answer {command} in time")
        self._sock.settimeout(remaining)
        try:
            chunk = self._sock.recv(_RECEIVE_BYTES)
        except TimeoutError as exc:
            raise GuestAgentUnavailable(
                f"the guest agent did not answer {command} in time"
            ) from exc
        except OSError as exc:
            raise GuestAgentUnavailable(f"guest agent at {self._path}: {exc}") from exc
        if not chunk:
            raise GuestAgentUnavailable(f"guest agent at {self._path} closed the connection")
        self._buffer += chunk
        self._received += len(chunk)
