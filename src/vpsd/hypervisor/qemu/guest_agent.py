"""A small synchronous client for the QEMU guest agent (``org.qemu.guest_agent.0``).

The agent speaks line-delimited JSON over a virtio-serial port that QEMU exposes on a unix
socket. It has no greeting, and a previous client may have left a half-read answer in the
channel, so every session starts with ``guest-sync-delimited``: a 0xFF byte is sent to
reset the agent's parser, and everything before the agent's own 0xFF-prefixed answer with
our random id is discarded. Until the guest opens its port, reads simply block: every call
has a timeout, and a guest that does not answer is reported as ``GuestAgentUnavailable``.
"""

from __future__ import annotations

import json
import secrets
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from vpsd.hypervisor.base import DriverError

SYNC_BYTE = b"\xff"


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
        self._buffer = b""

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

    def _sync(self) -> None:
        token = secrets.randbelow(2**31)
        request = {"execute": "guest-sync-delimited", "arguments": {"id": token}}
        self._send(SYNC_BYTE + json.dumps(request).encode() + b"\n")
        deadline = time.monotonic() + self._timeout
        while True:
            # Everything up to the agent's 0xFF is a stale answer to an earlier client.
            marker = self._buffer.find(SYNC_BYTE)
            if marker >= 0:
                self._buffer = self._buffer[marker + 1 :]
                reply = self._read_reply(deadline, "guest-sync-delimited")
                if reply.get("return") == token:
                    return
                continue
            self._buffer = b""
            self._receive(deadline, "guest-sync-delimited")

    def _send(self, data: bytes) -> None:
        assert self._sock is not None, "not connected"
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise GuestAgentUnavailable(f"guest agent at {self._path}: {exc}") from exc

    def _read_reply(self, deadline: float, command: str) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            self._receive(deadline, command)
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            reply = json.loads(line.strip(SYNC_BYTE + b" \r"))
        except ValueError as exc:
            raise GuestAgentError(f"guest agent sent invalid JSON for {command}") from exc
        if not isinstance(reply, dict):
            raise GuestAgentError(f"guest agent sent an unexpected answer to {command}")
        return reply

    def _receive(self, deadline: float, command: str) -> None:
        assert self._sock is not None, "not connected"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise GuestAgentUnavailable(f"the guest agent did not answer {command} in time")
        self._sock.settimeout(remaining)
        try:
            chunk = self._sock.recv(65536)
        except TimeoutError as exc:
            raise GuestAgentUnavailable(
                f"the guest agent did not answer {command} in time"
            ) from exc
        except OSError as exc:
            raise GuestAgentUnavailable(f"guest agent at {self._path}: {exc}") from exc
        if not chunk:
            raise GuestAgentUnavailable(f"guest agent at {self._path} closed the connection")
        self._buffer += chunk
