"""A small synchronous QMP session, for driver code running in plain worker threads.

``qemu.qmp`` is asyncio-only; its ``legacy.QEMUMonitorProtocol`` shim runs on the calling
thread's *registered* event loop, creating one and never closing it. That leaks one loop per
worker thread and breaks when the thread already has a loop. So each ``QmpSession`` owns a
private event loop (never registered as the thread's loop) for its lifetime and closes it at
the end: sessions in different threads, for different VMs, never share any asyncio state.
A session must not be used from inside a running event loop (call it via a thread there).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from qemu.qmp import ConnectError, ExecInterruptedError, ExecuteError, QMPClient, QMPError

from vpsd.hypervisor.base import DriverError

_T = TypeVar("_T")
log = logging.getLogger(__name__)


class QmpError(DriverError):
    """A QMP command failed, or QEMU's monitor could not be reached or timed out.

    ``desc`` is QEMU's own error description when QEMU answered with an error.
    """

    def __init__(self, reason: str, desc: str | None = None) -> None:
        super().__init__(reason)
        self.desc = desc


class QmpSession:
    """One connection to a VM's QMP socket; use as a context manager.

    Every call is bounded by ``timeout`` seconds. Errors surface as ``QmpError``.
    """

    def __init__(self, socket_path: Path, *, timeout: float = 30.0) -> None:
        self._path = socket_path
        self._timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: QMPClient | None = None

    def __enter__(self) -> QmpSession:
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
        """Connect and negotiate capabilities; raises ``QmpError`` if QEMU does not answer."""
        if self._client is not None:
            return
        self._loop = asyncio.new_event_loop()
        self._client = QMPClient(f"qmp:{self._path.name}")
        try:
            self._sync(self._client.connect(str(self._path)))
        except (QMPError, OSError, TimeoutError) as exc:
            self.close()
            raise QmpError(f"cannot reach QEMU monitor at {self._path}: {_describe(exc)}") from exc

    def execute(self, command: str, arguments: Mapping[str, object] | None = None) -> Any:
        """Run one QMP command and return its ``return`` value.

        Raises ``QmpError`` with QEMU's error description when QEMU rejects the command, and
        when the connection drops or the timeout passes before an answer arrives.
        """
        if self._client is None:
            raise QmpError("QMP session is not connected")
        try:
            return self._sync(self._client.execute(command, arguments))
        except ExecuteError as exc:
            raise QmpError(f"QMP {command} failed: {exc}", desc=str(exc)) from exc
        except ExecInterruptedError as exc:
            raise QmpError(f"QMP {command} interrupted: QEMU closed the connection") from exc
        except (QMPError, OSError, TimeoutError) as exc:
            raise QmpError(f"QMP {command} failed: {_describe(exc)}") from exc

    def human_command(self, command_line: str) -> str:
        """Run an HMP command through QMP (``human-monitor-command``) and return its output."""
        result = self.execute("human-monitor-command", {"command-line": command_line})
        return str(result)

    def close(self) -> None:
        """Disconnect (ignoring a connection QEMU already closed) and free the event loop."""
        client, loop = self._client, self._loop
        self._client = self._loop = None
        if loop is None:
            return
        try:
            if client is not None:
                loop.run_until_complete(asyncio.wait_for(client.disconnect(), self._timeout))
        except (QMPError, OSError, TimeoutError, EOFError) as exc:
            # After `quit` or a crash the peer is gone; disconnect re-raises that cause.
            log.debug("QMP disconnect from %s: %s", self._path, _describe(exc))
        finally:
            loop.close()

    def _sync(self, awaitable: Awaitable[_T]) -> _T:
        assert self._loop is not None
        return self._loop.run_until_complete(asyncio.wait_for(awaitable, self._timeout))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectError):
        return str(exc.exc) or exc.error_message
    return str(exc) or type(exc).__name__


def qmp_call(
    socket_path: Path,
    command: str,
    arguments: Mapping[str, object] | None = None,
    *,
    timeout: float = 30.0,
) -> Any:
    """Open a session, run one command, close: for one-off calls."""
    with QmpSession(socket_path, timeout=timeout) as session:
        return session.execute(command, arguments)
