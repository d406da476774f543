"""A hostile guest agent (issue 22, item 7): a guest controls every byte on its agent channel.

Before the fix, an agent that answered with hundreds of MB and no newline grew vpsd's memory
by 75 MB and held a snapshot for 40 s: the client kept every byte, searched the whole buffer
again after each read, and waited out its full timeout. Here a fake agent on a unix socket
(as QEMU exposes the guest's port) floods at each stage of a session; the client must give up
on the size, not on the clock, having taken in no more than its bound.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import qemu_helpers as qh
from vpsd.hypervisor.qemu.guest_agent import (
    MAX_REPLY_BYTES,
    MAX_STALE_BYTES,
    GuestAgent,
    GuestAgentError,
)

FLOOD_LIMIT = 256 * 1024 * 1024
"""The most the fake agent sends before it stops on its own."""
SOCKET_SLACK = 4 * 1024 * 1024
"""What can sit in the two sockets' kernel buffers, sent but never read by the client."""
GENEROUS_TIMEOUT = 30.0
"""Long enough that a client waiting for its deadline would be caught by the message."""


@dataclass
class Flood:
    """How the fake agent misbehaves: what it sends before the flood, and the flood's byte."""

    answer_sync: bool
    """Answer guest-sync-delimited properly first (the flood then answers a command)."""
    prefix: bytes
    filler: bytes


class FloodingAgent:
    """A unix socket that reads one request line, maybe answers the sync, then floods."""

    def __init__(self, path: Path, flood: Flood) -> None:
        self.path = path
        self.flood = flood
        self.sent = 0
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen(1)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        connection, _ = self._server.accept()
        with connection:
            request = self._read_line(connection)
            if self.flood.answer_sync:
                token = json.loads(request.lstrip(b"\xff"))["arguments"]["id"]
                connection.sendall(b"\xff" + json.dumps({"return": token}).encode() + b"\n")
                self._read_line(connection)
            chunk = self.flood.filler * 65536
            try:
                connection.sendall(self.flood.prefix)
                while self.sent < FLOOD_LIMIT:
                    connection.sendall(chunk)
                    self.sent += len(chunk)
            except OSError:
                return  # the client closed: what it wanted to hear of this guest

    @staticmethod
    def _read_line(connection: socket.socket) -> bytes:
        line = b""
        while not line.endswith(b"\n"):
            data = connection.recv(4096)
            if not data:
                break
            line += data
        return line

    def join(self) -> None:
        """Wait until the agent stopped flooding (the client closed, or the limit)."""
        self._thread.join(timeout=GENEROUS_TIMEOUT)
        self._server.close()


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short folder for the socket (unix socket paths are limited to ~108 bytes)."""
    root = qh.short_tmpdir()
    yield root
    for leftover in root.iterdir():
        leftover.unlink()
    root.rmdir()


@pytest.mark.parametrize(
    ("flood", "stage"),
    [
        # Stale junk with no sync byte: before the fix, read until the 30 s deadline.
        (Flood(answer_sync=False, prefix=b"", filler=b"x"), "sync"),
        # Answers to some other sync, over and over.
        (Flood(answer_sync=False, prefix=b"", filler=b'\xff{"return": 1}\n'), "sync"),
        # The sync byte, then an answer that never ends.
        (Flood(answer_sync=False, prefix=b"\xff{", filler=b" "), "sync"),
        # A proper sync, then a command's answer with no newline: 75 MB held before the fix.
        (Flood(answer_sync=True, prefix=b'{"return": "', filler=b"A"), "command"),
    ],
    ids=["stale-junk", "other-syncs", "endless-sync-answer", "endless-answer"],
)
def test_a_flooding_agent_is_cut_off_at_the_bound(
    socket_dir: Path, flood: Flood, stage: str
) -> None:
    agent = FloodingAgent(socket_dir / "qga.sock", flood)
    client = GuestAgent(agent.path, timeout=GENEROUS_TIMEOUT)
    with pytest.raises(GuestAgentError) as refused:
        client.connect()
        assert stage == "command", "the sync should have been refused"
        client.execute("guest-fsfreeze-status", timeout=GENEROUS_TIMEOUT)
    client.close()
    agent.join()
    message = str(refused.value)
    assert "in time" not in message, message  # given up on the size, not the clock
    assert "more than" in message and "MiB" in message, message
    bound = MAX_STALE_BYTES if flood.prefix == b"" else MAX_REPLY_BYTES
    assert agent.sent <= bound + SOCKET_SLACK, f"took in {agent.sent} bytes"


def test_a_session_cut_off_stays_closed(socket_dir: Path) -> None:
    """After an oversized answer the channel is out of step: later calls fail as guest agent
    errors (the snapshot goes on crash-consistently), never as a crash of the caller."""
    flood = Flood(answer_sync=True, prefix=b'{"return": "', filler=b"A")
    agent = FloodingAgent(socket_dir / "qga.sock", flood)
    with GuestAgent(agent.path, timeout=GENEROUS_TIMEOUT) as client:
        with pytest.raises(GuestAgentError):
            client.execute("guest-fsfreeze-freeze", timeout=GENEROUS_TIMEOUT)
        with pytest.raises(GuestAgentError, match="closed"):
            client.execute("guest-fsfreeze-thaw", timeout=GENEROUS_TIMEOUT)
    agent.join()


def test_a_long_but_bounded_answer_is_read_whole(socket_dir: Path) -> None:
    """An answer just under the bound (as a large guest-file-read might be) still arrives."""
    payload = "A" * (MAX_REPLY_BYTES - 64)
    path = socket_dir / "qga.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def answer() -> None:
        connection, _ = server.accept()
        with connection:
            request = FloodingAgent._read_line(connection)
            token = json.loads(request.lstrip(b"\xff"))["arguments"]["id"]
            connection.sendall(b"\xff" + json.dumps({"return": token}).encode() + b"\n")
            FloodingAgent._read_line(connection)
            # In small pieces, as a guest's virtio port delivers them.
            reply = json.dumps({"return": payload}).encode() + b"\n"
            for start in range(0, len(reply), 4096):
                connection.sendall(reply[start : start + 4096])

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    with GuestAgent(path, timeout=GENEROUS_TIMEOUT) as client:
        assert client.execute("guest-file-read", timeout=GENEROUS_TIMEOUT) == payload
    thread.join(timeout=GENEROUS_TIMEOUT)
    server.close()
