"""The pre-freeze sync runs only when the guest has enough dirty data to make the freeze long
(a fake guest agent answers; the real one is exercised by tests/guest)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from vpsd.hypervisor.qemu import quiesce
from vpsd.hypervisor.qemu.guest_agent import GuestAgentError

MEMINFO = "MemTotal:         230000 kB\nDirty:            {dirty} kB\nWriteback:        {wb} kB\n"


class FakeAgent:
    """Answers the agent commands ``_flush`` sends, recording them."""

    def __init__(self, meminfo: str | None, exits_after: int = 1) -> None:
        self.meminfo = meminfo
        self.exits_after = exits_after
        self.sent: list[str] = []

    def execute(self, command: str, arguments: dict[str, Any] | None = None, **_: Any) -> Any:
        self.sent.append(command)
        if command == "guest-file-open":
            if self.meminfo is None:
                raise GuestAgentError("guest agent refused guest-file-open: disabled")
            return 7
        if command == "guest-file-read":
            return {"buf-b64": base64.b64encode(self.meminfo.encode()).decode(), "eof": True}
        if command == "guest-exec":
            return {"pid": 42}
        if command == "guest-exec-status":
            self.exits_after -= 1
            return {"exited": self.exits_after <= 0}
        return None


@pytest.mark.parametrize(
    ("dirty_kb", "writeback_kb", "synced"),
    [(0, 0, False), (3 * 1024, 0, False), (2 * 1024, 2 * 1024 + 1, True), (64 * 1024, 0, True)],
)
def test_sync_only_above_the_threshold(dirty_kb: int, writeback_kb: int, synced: bool) -> None:
    agent = FakeAgent(MEMINFO.format(dirty=dirty_kb, wb=writeback_kb), exits_after=3)
    quiesce._flush(agent)  # type: ignore[arg-type]
    assert ("guest-exec" in agent.sent) is synced
    assert agent.sent.count("guest-file-close") == 1
    if synced:
        assert agent.sent.count("guest-exec-status") == 3  # waited until sync exited


def test_an_agent_that_cannot_read_files_syncs_to_be_safe() -> None:
    agent = FakeAgent(None)
    quiesce._flush(agent)  # type: ignore[arg-type]
    assert "guest-exec" in agent.sent
