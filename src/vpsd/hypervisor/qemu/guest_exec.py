"""Running a command in a guest as root, through its agent, with its output followed live.

``guest-exec`` starts ``/bin/sh -c COMMAND`` in a session of its own (``setsid``: a timeout
kills the whole group, never the agent), its stdout and stderr appended to a log file in the
guest (``LOG_DIR``). While it runs, the file's new bytes are read back now and then; at most
``tail_bytes`` of them are ever held (a flood is skipped over, not read), so a command that
writes gigabytes, or binary noise, costs the host a bounded amount of memory and time.
The agent's own ``capture-output`` would hold everything in the guest's agent and hand it
over in one answer only at the end.
"""

from __future__ import annotations

import base64
import logging
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vpsd.hypervisor.base import ExecResult
from vpsd.hypervisor.qemu.guest_agent import GuestAgent, GuestAgentError

log = logging.getLogger(__name__)

LOG_DIR = "/var/log/vpsd"
POLL = 0.5
"""Seconds between looks at a running command."""
READ_CHUNK = 48 * 1024
"""Bytes asked of the agent per read (its answer is base64, within the agent's reply cap)."""
AGENT_TIMEOUT = 10.0
KILL_GRACE = 10.0
"""Seconds a killed command's group has to be reported gone."""
WRAPPER = 'mkdir -p "${0%/*}" && exec >>"$0" 2>&1 </dev/null; exec /bin/sh -c "$1"'
"""Runs as ``sh -c WRAPPER LOG COMMAND``: output to LOG, then the command, quoting intact."""


def run(
    qga_socket: Path,
    command: str,
    timeout: float,
    *,
    tail_bytes: int,
    on_output: Callable[[bytes], None] | None = None,
) -> ExecResult:
    """Run ``command`` as root in the guest; see ``Driver.guest_run``."""
    log_file = f"{LOG_DIR}/exec-{secrets.token_hex(8)}.log"
    with GuestAgent(qga_socket, timeout=AGENT_TIMEOUT) as agent:
        started = agent.execute(
            "guest-exec",
            {"path": "/usr/bin/setsid", "arg": ["/bin/sh", "-c", WRAPPER, log_file, command]},
            timeout=AGENT_TIMEOUT,
        )
    pid = int(started["pid"])
    reader = _Tail(qga_socket, log_file, tail_bytes, on_output)
    deadline = time.monotonic() + timeout
    while True:
        status = _status(qga_socket, pid)
        reader.read()
        if status is None:  # the agent forgot it: the guest rebooted or the agent restarted
            return reader.result(None, timed_out=False, interrupted=True)
        if status.get("exited"):
            reader.read()
            return reader.result(_exit_code(status), timed_out=False, interrupted=False)
        if time.monotonic() > deadline:
            _kill_group(qga_socket, pid)
            reader.read()
            return reader.result(None, timed_out=True, interrupted=False)
        time.sleep(POLL)


def port_open(qga_socket: Path, port: int, timeout: float) -> bool:
    """Whether something in the guest accepts TCP connections on 127.0.0.1:``port``."""
    probe = f"exec 3<>/dev/tcp/127.0.0.1/{int(port)}"  # bash's: dash has no /dev/tcp
    with GuestAgent(qga_socket, timeout=AGENT_TIMEOUT) as agent:
        pid = int(agent.execute("guest-exec", {"path": "/bin/bash", "arg": ["-c", probe]})["pid"])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = agent.execute("guest-exec-status", {"pid": pid})
            if status.get("exited"):
                return _exit_code(status) == 0
            time.sleep(0.1)
    return False


def _status(qga_socket: Path, pid: int) -> dict[str, Any] | None:
    """The agent's ``guest-exec-status`` of ``pid``; None when it knows no such pid. An agent
    that does not answer now is asked again at the next look (the guest may be busy)."""
    try:
        with GuestAgent(qga_socket, timeout=AGENT_TIMEOUT) as agent:
            answer: dict[str, Any] = agent.execute(
                "guest-exec-status", {"pid": pid}, timeout=AGENT_TIMEOUT
            )
            return answer
    except GuestAgentError as exc:
        if "pid" in str(exc).lower() and "invalid" in str(exc).lower():
            return None
        log.info("guest agent at %s did not answer about pid %s: %s", qga_socket, pid, exc)
        return {}


def _exit_code(status: dict[str, Any]) -> int | None:
    if "exitcode" in status:
        return int(status["exitcode"])
    if "signal" in status:
        return 128 + int(status["signal"])  # as a shell reports a command killed by it
    return None


def _kill_group(qga_socket: Path, pid: int) -> None:
    """SIGKILL the command's process group (``setsid`` made ``pid`` its leader)."""
    try:
        with GuestAgent(qga_socket, timeout=AGENT_TIMEOUT) as agent:
            agent.execute("guest-exec", {"path": "/bin/kill", "arg": ["-KILL", "--", f"-{pid}"]})
    except GuestAgentError as exc:
        log.warning("could not kill command %s in the guest at %s: %s", pid, qga_socket, exc)
        return
    deadline = time.monotonic() + KILL_GRACE
    while time.monotonic() < deadline:
        status = _status(qga_socket, pid)
        if status is None or status.get("exited"):
            return
        time.sleep(0.2)


class _Tail:
    """The new bytes of a log file in the guest, read with the agent's file commands, of
    which only the last ``keep`` are ever held."""

    def __init__(
        self, qga_socket: Path, path: str, keep: int, on_output: Callable[[bytes], None] | None
    ) -> None:
        self.qga_socket = qga_socket
        self.path = path
        self.keep = keep
        self.on_output = on_output
        self.offset = 0
        self.tail = b""
        self.skipped = 0

    def read(self) -> None:
        """Read what the file gained since the last read (at most its last ``keep`` bytes)."""
        try:
            with GuestAgent(self.qga_socket, timeout=AGENT_TIMEOUT) as agent:
                handle = agent.execute("guest-file-open", {"path": self.path, "mode": "r"})
                try:
                    self._read_new(agent, handle)
                finally:
                    agent.execute("guest-file-close", {"handle": handle})
        except (GuestAgentError, KeyError, TypeError, ValueError) as exc:
            log.debug("reading %s in the guest at %s: %s", self.path, self.qga_socket, exc)

    def _read_new(self, agent: GuestAgent, handle: int) -> None:
        end = int(agent.execute("guest-file-seek", {"handle": handle, "offset": 0, "whence": 2})
                  ["position"])  # fmt: skip
        start = max(self.offset, end - self.keep)  # a flood's middle is never read
        self.skipped += start - self.offset
        agent.execute("guest-file-seek", {"handle": handle, "offset": start, "whence": 0})
        position = start
        while position < end:
            read = agent.execute(
                "guest-file-read", {"handle": handle, "count": min(READ_CHUNK, end - position)}
            )
            chunk = base64.b64decode(read["buf-b64"])
            if not chunk:
                break
            position += len(chunk)
            self.tail = (self.tail + chunk)[-self.keep :]
            if self.on_output is not None:
                self.on_output(chunk)
        self.offset = position

    def result(self, exit_code: int | None, *, timed_out: bool, interrupted: bool) -> ExecResult:
        """The run's result, with the output this tail holds."""
        return ExecResult(
            exit_code=exit_code,
            timed_out=timed_out,
            interrupted=interrupted,
            output=self.tail,
            output_bytes=self.offset,
        )
