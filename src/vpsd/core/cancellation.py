"""Calling work off: a ``CancelScope`` current in a thread makes every program that
``commands.streaming`` starts there killable at once, with the reason the work fails with."""

from __future__ import annotations

import contextlib
import contextvars
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from vpsd.core.errors import HostError


class Cancelled(HostError):
    """The work was called off (``CancelScope.cancel``); ``str(error)`` says why, in words
    fit for the user."""


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the program and what it started (its own session: ``start_new_session``)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.kill()


class CancelScope:
    """The programs ``streaming`` starts in a thread while this scope is current there
    (``cancellable``): ``cancel`` kills them all, and any started later fails at once."""

    def __init__(self) -> None:
        self.reason: str | None = None
        """Why the work was called off; None while it was not."""
        self._running: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()

    def cancel(self, reason: str) -> None:
        """Call the work off: kill its programs (with what they started) now."""
        with self._lock:
            if self.reason is None:
                self.reason = reason
            running = list(self._running)
        for process in running:
            kill_group(process)

    def check(self) -> None:
        """Raise ``Cancelled`` if the work was called off."""
        if self.reason is not None:
            raise Cancelled(self.reason)

    def started(self, process: subprocess.Popen[bytes]) -> None:
        """``process`` is part of the work (killed at once if it was called off already)."""
        with self._lock:
            self._running.add(process)
            cancelled = self.reason is not None
        if cancelled:  # called off between the check and the start
            kill_group(process)

    def ended(self, process: subprocess.Popen[bytes]) -> None:
        """``process`` has ended."""
        with self._lock:
            self._running.discard(process)


_current_scope: contextvars.ContextVar[CancelScope | None] = contextvars.ContextVar(
    "vpsd_cancel_scope", default=None
)


def current_scope() -> CancelScope | None:
    """The scope current in this thread, if any."""
    return _current_scope.get()


@contextmanager
def cancellable(scope: CancelScope) -> Iterator[CancelScope]:
    """Make ``scope`` current in this thread for the body of the ``with``."""
    token = _current_scope.set(scope)
    try:
        yield scope
    finally:
        _current_scope.reset(token)


def raise_if_cancelled() -> None:
    """Raise ``Cancelled`` if the current thread's ``CancelScope`` was cancelled (work done
    in-process, which no kill reaches, checks here between its steps)."""
    scope = _current_scope.get()
    if scope is not None:
        scope.check()
