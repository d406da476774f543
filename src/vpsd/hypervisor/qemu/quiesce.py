"""Filesystem-consistent snapshots: freeze the guest's filesystems around the snapshot.

Through the guest agent: ``sync`` first (``guest-exec``) when the guest holds much dirty
data, so the freeze has little left to flush and the guest stays frozen for as short a time
as possible; then
``guest-fsfreeze-freeze``, the caller's snapshot, and ``guest-fsfreeze-thaw``. The thaw is
guaranteed as far as a host can guarantee it: it runs in a ``finally``, with a timeout, is
retried on a fresh connection, and a marker file records a freeze that might still hold, so
start-up recovery thaws a guest that vpsd left frozen when it was killed.

A guest whose agent does not answer within ``AGENT_TIMEOUT`` (still booting, no agent, hung)
is snapshotted crash-consistently rather than waited for.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vpsd.hypervisor.qemu.guest_agent import GuestAgent, GuestAgentError

log = logging.getLogger(__name__)

AGENT_TIMEOUT = 1.0
"""Seconds to connect and sync: an agent that answers at all does so in milliseconds."""
FLUSH_TIMEOUT = 5.0
"""Seconds the pre-freeze ``sync`` may take; the freeze flushes whatever is left."""
FLUSH_THRESHOLD = 4 * 1024 * 1024
"""Dirty bytes in the guest above which it runs ``sync`` before the freeze (see ``_flush``)."""
FREEZE_TIMEOUT = 10.0
THAW_TIMEOUT = 5.0
THAW_ATTEMPTS = 3


@contextmanager
def quiesced(qga_socket: Path, marker: Path) -> Iterator[bool]:
    """Hold the guest's filesystems frozen for the ``with`` block; yield whether they are.

    Yields False (and freezes nothing) when the agent does not answer or refuses the
    freeze. Afterwards the guest is thawed, also when the block raised; if no thaw can be
    confirmed, ``marker`` stays for ``thaw_left_frozen`` to retry.
    """
    if not qga_socket.exists():
        yield False
        return
    agent = GuestAgent(qga_socket, timeout=AGENT_TIMEOUT)
    try:
        agent.connect()
    except GuestAgentError as exc:
        log.info("guest agent at %s not answering (%s): crash-consistent snapshot", qga_socket, exc)
        yield False
        return
    frozen = False
    flushing = time.monotonic()
    try:
        _flush(agent)
        marker.touch()  # before the freeze: a vpsd killed from here on leaves it behind
        freezing = time.monotonic()
        try:
            agent.execute("guest-fsfreeze-freeze", timeout=FREEZE_TIMEOUT)
            frozen = True
        except GuestAgentError as exc:
            log.warning("freezing the guest at %s failed (%s): crash-consistent", qga_socket, exc)
        yield frozen
    finally:
        # Also after a failed freeze: one that timed out may still complete in the guest.
        _thaw(agent, qga_socket, marker)
        if frozen:
            # From the freeze request to the thaw's answer: the longest the guest's writes
            # can have waited (the bench reads this line).
            log.info(
                "guest of server %s frozen %.0f ms (pre-freeze sync %.0f ms)",
                qga_socket.parent.name,
                (time.monotonic() - freezing) * 1000,
                (freezing - flushing) * 1000,
            )


def thaw_left_frozen(qga_socket: Path, marker: Path) -> bool:
    """Thaw a guest an interrupted snapshot may have left frozen; True when it is thawed.

    ``marker`` is removed once the guest is known to be thawed.
    """
    try:
        with GuestAgent(qga_socket, timeout=AGENT_TIMEOUT) as agent:
            state = agent.execute("guest-fsfreeze-status", timeout=THAW_TIMEOUT)
            if state == "frozen":
                log.warning("guest at %s was left frozen; thawing it", qga_socket)
                agent.execute("guest-fsfreeze-thaw", timeout=THAW_TIMEOUT)
    except GuestAgentError as exc:
        log.warning("could not check the freeze of the guest at %s: %s", qga_socket, exc)
        return False
    marker.unlink(missing_ok=True)
    return True


def _flush(agent: GuestAgent) -> None:
    """``sync`` in the guest when it holds enough dirty data to make the freeze long, bounded;
    a guest that refuses guest-exec (or the read of its meminfo) is frozen unflushed.

    The freeze flushes dirty data itself, with the guest's writes waiting; a ``sync`` first
    lets it do that while they go on. But spawning ``sync`` costs 60-250 ms under software
    emulation, more than a freeze with little to flush: below ``FLUSH_THRESHOLD`` bytes of
    dirty data it is skipped.
    """
    try:
        dirty = _dirty_bytes(agent)
        if dirty is not None and dirty < FLUSH_THRESHOLD:
            return
        pid = agent.execute("guest-exec", {"path": "/bin/sync"}, timeout=FLUSH_TIMEOUT)["pid"]
        deadline = time.monotonic() + FLUSH_TIMEOUT
        while time.monotonic() < deadline:
            status = agent.execute("guest-exec-status", {"pid": pid}, timeout=FLUSH_TIMEOUT)
            if status.get("exited"):
                return
            time.sleep(0.002)
    except (GuestAgentError, KeyError, TypeError) as exc:
        log.info("pre-freeze sync in the guest skipped: %s", exc)


def _dirty_bytes(agent: GuestAgent) -> int | None:
    """Dirty and writeback bytes of the guest's page cache (its ``/proc/meminfo``, read
    through the agent's file commands: no process spawned), None when unreadable."""
    try:
        handle = agent.execute("guest-file-open", {"path": "/proc/meminfo", "mode": "r"})
        try:
            read = agent.execute("guest-file-read", {"handle": handle, "count": 8192})
        finally:
            agent.execute("guest-file-close", {"handle": handle})
        text = base64.b64decode(read["buf-b64"]).decode(errors="replace")
    except (GuestAgentError, KeyError, TypeError, ValueError) as exc:
        log.info("cannot read the guest's dirty memory: %s", exc)
        return None
    total = 0
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in ("Dirty", "Writeback") and value.split()[:1]:
            total += int(value.split()[0]) * 1024
    return total


def _thaw(agent: GuestAgent, qga_socket: Path, marker: Path) -> None:
    for attempt in range(THAW_ATTEMPTS):
        try:
            if attempt > 0:
                # The first session may hold an unread answer: a fresh one resyncs.
                agent.close()
                agent = GuestAgent(qga_socket, timeout=THAW_TIMEOUT)
                agent.connect()
            agent.execute("guest-fsfreeze-thaw", timeout=THAW_TIMEOUT)
        except GuestAgentError as exc:
            log.warning("thawing the guest at %s failed (try %d): %s", qga_socket, attempt + 1, exc)
            continue
        else:
            marker.unlink(missing_ok=True)
            return
        finally:
            agent.close()
    log.error("the guest at %s may still be frozen; vpsd retries at its next start", qga_socket)
