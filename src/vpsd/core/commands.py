"""The one chokepoint through which vpsd runs external programs (qemu-img, qemu-system,
mmdebstrap, restic, nbdcopy...).

No shell is ever involved, every call has a timeout, and every failure becomes a
``CommandError`` whose message names the program and quotes its stderr, so the reason can be
shown to a user as is.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from vpsd.core.cancellation import Cancelled, current_scope, kill_group
from vpsd.core.errors import HostError

# Commands run with a fixed, C locale so error messages are stable English text, while
# keeping PATH (tests and packagers rely on it to find the qemu binaries).
_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}


class CommandError(HostError):
    """An external command failed or timed out.

    ``command`` is the argument vector (named so because ``BaseException.args`` is taken:
    it holds the one-line reason), ``returncode`` is ``None`` when the command timed out or
    could not be started, ``stderr`` is the program's full error output.
    """

    def __init__(self, args: list[str], returncode: int | None, stderr: str, reason: str) -> None:
        super().__init__(reason)
        self.command = list(args)
        self.returncode = returncode
        self.stderr = stderr


def _name(args: list[str]) -> str:
    """``qemu-img snapshot`` style short name: the program plus its sub-command, if any."""
    program = Path(args[0]).name
    if len(args) > 1 and not args[1].startswith("-") and program == "qemu-img":
        return f"{program} {args[1]}"
    return program


def _one_line(text: str) -> str:
    """Squash multi-line stderr into one line, keeping every message."""
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def run(
    args: list[str],
    *,
    timeout: float,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``args`` (no shell) and return the completed process with captured text output.

    Raises ``CommandError`` if the program is missing, exits non-zero, or runs longer than
    ``timeout`` seconds (it is killed then). stdin is /dev/null so a command can never wait
    for input, and no file descriptor of ours leaks into the child. ``env`` adds to the
    fixed environment (PATH and the C locale).
    """
    if not args:
        raise ValueError("run() needs a command")
    name = _name(args)
    try:
        result = subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            cwd=cwd,
            env={**_ENV, **(env or {})},
            close_fds=True,
            # Own session: a Ctrl-C aimed at vpsd must not kill a qemu-img halfway through a
            # snapshot, and a daemonizing QEMU starts detached from our terminal.
            start_new_session=True,
            check=False,
        )
    except FileNotFoundError as exc:
        raise CommandError(args, None, "", f"{name} failed: program not found ({exc})") from exc
    except subprocess.TimeoutExpired as exc:
        stderr = _decode(exc.stderr)
        detail = f": {_one_line(stderr)}" if stderr.strip() else ""
        raise CommandError(
            args, None, stderr, f"{name} timed out after {timeout:g}s{detail}"
        ) from exc
    if result.returncode != 0:
        detail = _one_line(result.stderr) or _one_line(result.stdout) or "no error output"
        raise CommandError(
            args,
            result.returncode,
            result.stderr,
            f"{name} failed (exit {result.returncode}): {detail}",
        )
    return result


def run_streaming(
    args: list[str], *, timeout: float, on_line: Callable[[str], None], cwd: Path | None = None
) -> None:
    """Run a long command (no shell), handing each line of its output to ``on_line``.

    For work that takes minutes and should show progress (an image build). stdout and
    stderr are merged; the last lines are kept for the ``CommandError`` raised when the
    program is missing, exits non-zero or runs longer than ``timeout`` (it is killed then,
    with what it started). Like ``streaming``'s programs, it dies with vpsd.
    """
    name = _name(args)
    tail: collections.deque[str] = collections.deque(maxlen=40)
    with _watched(args, timeout, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd) as (
        process,
        timed_out,
    ):
        assert process.stdout is not None
        with process.stdout:
            for raw in process.stdout:
                line = raw.decode(errors="replace").rstrip("\n")
                tail.append(line)
                on_line(line)
        returncode = process.wait()
    output = "\n".join(tail)
    if timed_out.is_set():
        raise CommandError(args, None, output, f"{name} timed out after {timeout:g}s")
    if returncode != 0:
        detail = _one_line("\n".join(list(tail)[-5:])) or "no output"
        raise CommandError(args, returncode, output, f"{name} failed (exit {returncode}): {detail}")


def run_json(args: list[str], *, timeout: float, cwd: Path | None = None) -> Any:
    """Run a command that prints ``--output=json`` and return the parsed document.

    ``args`` must already contain ``--output=json``. Unparseable output raises
    ``CommandError`` too.
    """
    result = run(args, timeout=timeout, cwd=cwd)
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError as exc:
        raise CommandError(
            args, result.returncode, result.stderr, f"{_name(args)} printed invalid JSON: {exc}"
        ) from exc


def _decode(data: bytes | str | None) -> str:
    if data is None:
        return ""
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data


_PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl
"""Looked up here, once: between fork and exec the child must not dlopen, whose lock another
thread of vpsd may have held when it forked (the child would hang before it ran restic)."""


def _die_with_parent() -> None:  # pragma: no cover (runs in the child, between fork and exec)
    # A stream left running by a killed vpsd would go on reading a snapshot that the rerun of
    # its operation deletes, or writing a disk that another run writes: it must die with us.
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@contextmanager
def streaming(
    args: list[str],
    *,
    timeout: float,
    stdin: int | IO[bytes] | None = None,
    stdout: int | IO[bytes] | None = None,
    env: Mapping[str, str] | None = None,
    kill_on: Callable[[str], bool] | None = None,
    cwd: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a program that streams data through pipes (``subprocess.PIPE``) or file objects,
    for the body of the ``with``; then wait for it to end (in ``cwd``, else ``/``).

    Raises ``CommandError`` when it is missing, exits non-zero, or has not ended
    ``timeout`` seconds after it started (it is killed then). When the body raises, the
    program is killed, with whatever it started (its process group). Unlike ``run``'s
    commands, it dies with vpsd (``PR_SET_PDEATHSIG``: Linux sends it SIGKILL when the thread
    that started it ends). A line of its stderr for which ``kill_on`` is true kills it at
    once (an error it would only retry). Within a ``CancelScope`` that is cancelled
    (``vpsd.core.cancellation``), it is killed and ``Cancelled`` raised.
    """
    name = _name(args)
    scope = current_scope()
    if scope is not None:
        scope.check()
    stderr_lines: list[bytes] = []
    with _watched(
        args,
        timeout,
        stdin=subprocess.DEVNULL if stdin is None else stdin,
        stdout=subprocess.DEVNULL if stdout is None else stdout,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=env,
    ) as (process, timed_out):
        if scope is not None:
            scope.started(process)
        reader = threading.Thread(target=_drain, args=(process, stderr_lines, kill_on), daemon=True)
        reader.start()
        try:
            yield process
        except BaseException:
            kill_group(process)  # before waiting for it below
            raise
        finally:
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    # Bytes still buffered for a program that died (killed, or failed) cannot
                    # be flushed: its exit status says what happened, and the body's own error
                    # must not be masked by a BrokenPipeError.
                    with contextlib.suppress(BrokenPipeError):
                        pipe.close()
            try:
                returncode = process.wait()
            finally:
                if scope is not None:
                    scope.ended(process)
            # A child the program started (nbdcopy's qemu-nbd) may hold stderr open after it.
            reader.join(timeout=10.0)
    stderr = b"".join(stderr_lines).decode(errors="replace")
    if returncode != 0 and scope is not None and scope.reason is not None:
        raise Cancelled(scope.reason)
    if timed_out.is_set():
        raise CommandError(args, None, stderr, f"{name} timed out after {timeout:g}s")
    if returncode != 0:
        detail = _one_line(stderr)[-2000:] or "no error output"
        raise CommandError(args, returncode, stderr, f"{name} failed (exit {returncode}): {detail}")


@contextmanager
def _watched(
    args: list[str],
    timeout: float | None,
    *,
    stdin: int | IO[bytes] = subprocess.DEVNULL,
    stdout: int | IO[bytes] = subprocess.DEVNULL,
    stderr: int = subprocess.PIPE,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[tuple[subprocess.Popen[bytes], threading.Event]]:
    """Start ``args`` (no shell, its own session, dying with vpsd) under a watchdog that
    kills it and what it started after ``timeout`` seconds (None: no watchdog); yield it and
    the event set when the watchdog fired. When the body raises, or leaves it running, the
    program is killed likewise."""
    if not args:
        raise ValueError("a command is needed")
    try:
        process = subprocess.Popen(
            args,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            cwd=cwd or "/",
            env={**_ENV, **(env or {})},
            close_fds=True,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    except FileNotFoundError as exc:
        raise CommandError(
            args, None, "", f"{_name(args)} failed: program not found ({exc})"
        ) from exc
    # A watchdog rather than a deadline check per read: a silent, hung program is killed too.
    timed_out = threading.Event()

    def expire() -> None:
        timed_out.set()
        kill_group(process)

    timer = threading.Timer(timeout, expire) if timeout is not None else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        yield process, timed_out
    except BaseException:
        kill_group(process)
        raise
    finally:
        if timer is not None:
            timer.cancel()
        if process.poll() is None:
            kill_group(process)
            process.wait()


@contextmanager
def serving(args: list[str], *, ready: Path, timeout: float = 30.0) -> Iterator[None]:
    """Run a server (``qemu-nbd``...) for the body of the ``with``, once the unix socket
    ``ready`` exists; then kill it (and what it started). Like ``streaming``'s programs, it
    dies with vpsd. Raises ``CommandError`` when it is missing, or ends or has not made
    ``ready`` within ``timeout`` seconds.
    """
    name = _name(args)
    with _watched(args, None, stderr=subprocess.PIPE) as (process, _):
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                kill_group(process)
                assert process.stderr is not None
                stderr = process.stderr.read().decode(errors="replace")
                detail = _one_line(stderr)[-2000:] or "no error output"
                raise CommandError(args, process.returncode, stderr, f"{name} failed: {detail}")
            time.sleep(0.005)
        try:
            yield
        finally:
            if process.stderr is not None:
                process.stderr.close()


def _drain(
    process: subprocess.Popen[bytes], into: list[bytes], kill_on: Callable[[str], bool] | None
) -> None:
    assert process.stderr is not None
    with process.stderr:
        for line in process.stderr:
            into.append(line)
            if kill_on is not None and kill_on(line.decode(errors="replace")):
                kill_group(process)
                kill_on = None  # once is enough; the rest is still collected
