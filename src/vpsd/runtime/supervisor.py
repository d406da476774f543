"""The supervisor of ``vpsd serve --workers N``: uvicorn's ``Multiprocess``, which replaces a
worker that dies or hangs, with every worker's exit logged and time for a worker to start.

uvicorn's supervisor checks each worker every half second: it sends a ping on a pipe and
waits ``timeout_worker_healthcheck`` (5 s by default) for the answer, and SIGKILLs and
replaces a worker that does not answer, logging only "Child process [N] died". A worker
answers from a thread that it starts only once it has imported vpsd, and on a loaded machine
that import takes longer than 5 s (``import vpsd.cli.vpsd`` took 7.5 s beside the load
test). So each new worker was killed mid-import and replaced by one that met the same end,
with nothing in the log to say why (issue 22, item 10).

``Supervisor`` changes two things:

- a worker that has not answered yet is starting: it has ``START_SECONDS`` from its start to
  answer its first ping, which is looked for without blocking the checks of the others; from
  its first answer on, the health check's ``timeout_worker_healthcheck`` applies;
- every worker's exit is logged with its cause: the exit code or the signal that ended it,
  and whether the supervisor killed it (and why) or it ended by itself. A worker replaced
  after an unexpected exit is an error in the log; one stopped with the parent is not. The
  wait for a running worker's answer ends when it exits (uvicorn's waited out its timeout,
  then reported a dead worker as one that did not answer).

Under ``stress-ng --cpu 2``, uvicorn's supervisor killed 4 workers of ``vpsd serve --workers
2`` at start and the second served after 32 s; this one killed none, and both served within
10 s.

uvicorn's other signals (SIGHUP, SIGTTIN, SIGTTOU) behave as uvicorn has them.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import signal
import time
from multiprocessing.connection import wait
from socket import socket

from uvicorn.config import STARTUP_FAILURE, Config
from uvicorn.supervisors.multiprocess import Multiprocess, Process

log = logging.getLogger(__name__)

START_SECONDS = 120.0
"""How long a new worker may take to answer its first health check: a spawned worker imports
vpsd before it can answer, which takes about a second on an idle machine and can take tens of
seconds on a loaded one."""

HEALTH_CHECK_SECONDS = 30
"""How long a running worker may take to answer a health check before it is deemed hung,
SIGKILLed and replaced (gunicorn's default worker timeout). It answers from a thread of its
own, so a busy event loop does not delay it, but a starved machine can, by seconds; killing
a worker that is only slow resets every connection it holds."""


EXIT_GRACE_SECONDS = 2.0
"""How long a worker that stopped answering may take to be seen exited (its pipe closes a
moment before the process is gone) before it is deemed hung and killed."""


def exit_cause(exitcode: int | None) -> str:
    """A worker's exit in words, from ``multiprocessing``'s exit code (``-N``: signal N):
    ``exit code 1``, ``signal SIGKILL``. (uvicorn's workers end by SIGTERM once they have
    shut down on it: they raise it again.)"""
    if exitcode is None:
        return "it is still running"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = str(-exitcode)
        return f"signal {name}"
    if exitcode == STARTUP_FAILURE:
        return f"exit code {exitcode}: its application could not start (its log says why)"
    return f"exit code {exitcode}"


class Supervisor(Multiprocess):
    """uvicorn's ``Multiprocess`` with a start grace for new workers and every worker's exit
    logged with its cause. See the module's doc."""

    def __init__(
        self, config: Config, sockets: list[socket], start_seconds: float = START_SECONDS
    ) -> None:
        super().__init__(config, sockets)
        self.start_seconds = start_seconds
        self.failed_start = False
        """Whether the supervisor stopped because a worker's application could not start."""
        self._starting: dict[Process, float] = {}
        """Workers that have not answered a ping yet, and when they were first checked."""
        self._answered: set[Process] = set()
        """Workers that have answered a ping: running, checked with the health check."""

    def keep_subprocess_alive(self) -> None:
        """Replace every worker that has exited, or that did not answer in time (SIGKILLed
        first), and log why; stop when a worker's application could not start, as uvicorn
        does (every worker would fail alike)."""
        if self.should_exit.is_set():
            return
        for index, process in enumerate(self.processes):
            reason = self._why_replace(process)
            if reason is None:
                continue
            process.kill()  # nothing to do when it has exited
            process.join()
            self._starting.pop(process, None)
            self._answered.discard(process)
            log.error("API worker %s %s (%s)", process.pid, reason, exit_cause(process.exitcode))
            if process.exitcode == STARTUP_FAILURE:
                log.error("stopping: the API workers cannot start")
                self.failed_start = True
                self.should_exit.set()
                return
            if self.should_exit.is_set():
                return
            replacement = Process(self.config, self.sockets)
            replacement.start()
            self.processes[index] = replacement
            log.warning("API worker %s started in place of %s", replacement.pid, process.pid)

    def _why_replace(self, process: Process) -> str | None:
        """Why ``process`` must be replaced, in words, or None while it is well or still has
        time to start."""
        if not process.process.is_alive():
            return "exited unexpectedly"
        if process in self._answered:
            timeout = self.config.timeout_worker_healthcheck
            if self._answers(process, timeout):
                return None
            # A worker whose exit cut the wait short may not be reaped yet: let it finish.
            process.process.join(EXIT_GRACE_SECONDS)
            if not process.process.is_alive():
                return "exited unexpectedly"
            return f"did not answer the health check within {timeout} s and was killed"
        now = time.monotonic()
        if process not in self._starting:
            self._starting[process] = now
            # Answered once it has started; a pipe already gone means it is exiting, which
            # the next check sees.
            with contextlib.suppress(OSError):
                process.parent_conn.send(b"ping")
        if self._answer_arrived(process):
            del self._starting[process]
            self._answered.add(process)
            return None
        if now - self._starting[process] < self.start_seconds:
            return None
        return f"did not answer within {self.start_seconds:g} s of its start and was killed"

    @staticmethod
    def _answers(process: Process, timeout: float) -> bool:
        """Ping a running worker; whether it answered within ``timeout``. The wait ends early
        when the worker exits (uvicorn's ``ping`` waited out its timeout for a worker that
        had died, since the parent holds both ends of the pipe)."""
        try:
            process.parent_conn.send(b"ping")
            ready = wait([process.parent_conn, process.process.sentinel], timeout)
            if process.parent_conn not in ready:
                return False
            process.parent_conn.recv()
        except (OSError, EOFError, pickle.UnpicklingError):
            return False
        return True

    @staticmethod
    def _answer_arrived(process: Process) -> bool:
        """Whether a starting worker has answered its ping (read now, without waiting)."""
        try:
            if not process.parent_conn.poll(0):
                return False
            process.parent_conn.recv()
        except (OSError, EOFError, pickle.UnpicklingError):
            return False
        return True

    def join_all(self) -> None:
        """Wait for every worker to exit (the parent is stopping) and log how each did."""
        for process in self.processes:
            process.join()
            log.info("API worker %s stopped (%s)", process.pid, exit_cause(process.exitcode))
