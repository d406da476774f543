"""What vpsctl shows: tables for people, the API's JSON for scripts, progress, errors.

Results go to stdout; progress, prompts and errors to stderr, so ``-o json`` output can
always be piped into ``jq``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from datetime import datetime
from enum import IntEnum, StrEnum
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.status import Status
from rich.table import Table

from vpsd.client import (
    AuthenticationError,
    BackupOut,
    BackupPolicyOut,
    ConnectionFailed,
    NotFoundError,
    ServerOut,
    SnapshotOut,
    SnapshotPolicyOut,
    VpsdClientError,
    WaitTimeout,
)
from vpsd.schemas import BackupSource, ServerRef


class ExitCode(IntEnum):
    """vpsctl's exit codes (documented in ``vpsctl --help`` and docs/cli.md)."""

    OK = 0
    FAILED = 1
    """the API refused the request (400, 5xx), an awaited operation failed, or you said no"""
    USAGE = 2
    """bad flags or arguments, missing configuration, confirmation needed but no terminal"""
    NOT_FOUND = 3
    AUTH = 4
    TIMEOUT = 5
    CONNECTION = 6
    INTERRUPTED = 130


EXIT_CODES_HELP = (
    "Exit codes: 0 ok; 1 API error or failed operation (or confirmation declined); "
    "2 usage or configuration error; 3 not found; 4 authentication failed; "
    "5 --wait timed out; 6 cannot connect to the API; 130 interrupted."
)


class OutputFormat(StrEnum):
    """``--output``: a table for people or the API's JSON for scripts."""

    table = "table"
    json = "json"


def _stdout_console() -> Console:
    # Piped tables must not be cut at 80 columns: scripts grep them.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def error_line(message: str) -> None:
    """Print ``error: <message>`` as exactly one line on stderr."""
    print(f"error: {' '.join(message.split())}", file=sys.stderr, flush=True)


def exit_code_for(error: VpsdClientError) -> ExitCode:
    """The documented exit code of an SDK error."""
    if isinstance(error, NotFoundError):
        return ExitCode.NOT_FOUND
    if isinstance(error, AuthenticationError):
        return ExitCode.AUTH
    if isinstance(error, WaitTimeout):
        return ExitCode.TIMEOUT
    if isinstance(error, ConnectionFailed):
        return ExitCode.CONNECTION
    return ExitCode.FAILED


def report(error: VpsdClientError) -> ExitCode:
    """Show an SDK error as one line on stderr and return its exit code."""
    message = str(error)
    if isinstance(error, AuthenticationError):
        message += " (check --token, VPSD_TOKEN or 'vpsctl login')"
    error_line(message)
    return exit_code_for(error)


def print_json(body: Any) -> None:
    """The API's body on stdout, unchanged but indented."""
    print(json.dumps(body, indent=2, ensure_ascii=False))


def _text(value: Any) -> str:
    return "" if value is None else escape(str(value))


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%d %H:%M:%SZ")


def _mib(mb: int | None) -> str | None:
    return None if mb is None else f"{mb} MiB"


def _memory(mb: int) -> str:
    return f"{mb / 1024:g} GiB" if mb >= 1024 and mb % 256 == 0 else f"{mb} MiB"


def ssh_address(server: ServerOut) -> str | None:
    """The server's SSH endpoint as ``host:port`` (``[host]:port`` for IPv6); None if it
    has none (a blank server)."""
    if server.ssh is None:
        return None
    host = server.ssh.host
    return f"[{host}]:{server.ssh.port}" if ":" in host else f"{host}:{server.ssh.port}"


def server_source(server: ServerOut) -> str | None:
    """What the server was made from: ``snapshot 7``, ``backup 3``; None if from an image."""
    source = server.source
    if source is None:
        return None
    if isinstance(source, BackupSource):
        return f"backup {source.backup_id}"
    return f"snapshot {source.snapshot_id}"


def servers_table(servers: Iterable[ServerOut]) -> None:
    """Servers as a table: one row each."""
    table = Table(
        "ID", "NAME", "STATUS", "IMAGE", "SSH", "VCPUS", "MEMORY", "DISK", "CREATED", box=None
    )
    for s in servers:
        table.add_row(
            str(s.id), _text(s.name), s.status, _text(s.image), _text(ssh_address(s) or "-"),
            str(s.vcpus), _memory(s.memory_mb), f"{s.disk_gb} GiB", _time(s.created_at),
        )  # fmt: skip
    _stdout_console().print(table)


def snapshots_table(snapshots: Iterable[SnapshotOut]) -> None:
    """Snapshots as a table: one row each."""
    table = Table(
        "ID", "NAME", "SERVER", "TYPE", "STATUS", "CONSISTENCY", "MEMORY", "SIZE", "CREATED",
        "PROTECTED", "EXPIRES", "DESCRIPTION", box=None,
    )  # fmt: skip
    for s in snapshots:
        table.add_row(
            str(s.id), _text(s.name), _server_ref(s.server), s.type, s.status,
            s.consistency or "-", "yes" if s.memory else "-", _mib(s.size_mb) or "-",
            _time(s.created_at), "yes" if s.protected else "-", _time(s.expires_at) or "-",
            _text(s.description),
        )  # fmt: skip
    _stdout_console().print(table)


def _server_ref(server: ServerRef) -> str:
    return f"{_text(server.name)} ({server.id})"


def backups_table(backups: Iterable[BackupOut]) -> None:
    """Backups as a table: one row each; SIZE is the server's data, STORED what the backup
    added to the backup storage."""
    table = Table(
        "ID", "NAME", "SERVER", "TYPE", "STATUS", "SIZE", "STORED", "CREATED", "DESCRIPTION",
        box=None,
    )  # fmt: skip
    for b in backups:
        table.add_row(
            str(b.id), _text(b.name), _server_ref(b.server), b.type, b.status,
            _mib(b.size_mb) or "-", _mib(b.stored_mb) or "-", _time(b.created_at),
            _text(b.description),
        )  # fmt: skip
    _stdout_console().print(table)


def details(rows: list[tuple[str, Any]]) -> None:
    """One object as ``field  value`` lines."""
    table = Table(box=None, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for label, value in rows:
        table.add_row(label, "-" if value is None or value == "" else _text(value))
    _stdout_console().print(table)


def server_details(s: ServerOut) -> None:
    """Every field of a server."""
    details(
        [
            ("ID", s.id), ("Name", s.name), ("Status", s.status),
            ("Status reason", s.status_reason), ("Image", s.image), ("SSH", ssh_address(s)),
            ("vCPUs", s.vcpus), ("Memory", _memory(s.memory_mb)), ("Disk", f"{s.disk_gb} GiB"),
            ("Source", server_source(s)), ("Created", _time(s.created_at)),
        ]
    )  # fmt: skip


def snapshot_details(s: SnapshotOut) -> None:
    """Every field of a snapshot."""
    details(
        [
            ("ID", s.id), ("Name", s.name), ("Server", f"{s.server.name} ({s.server.id})"),
            ("Status", s.status), ("Status reason", s.status_reason),
            ("Consistency", s.consistency), ("Size", _mib(s.size_mb)),
            ("Memory", _saved_memory(s)),
            ("Created", _time(s.created_at)), ("Description", s.description),
            ("Type", s.type), ("Protected", "yes" if s.protected else "no"),
            ("Expires", _time(s.expires_at) or "never"),
        ]
    )  # fmt: skip


def _saved_memory(s: SnapshotOut) -> str:
    """Whether a snapshot holds memory, and the pause it cost the guest."""
    if not s.memory:
        return "no (a restore boots the server)"
    paused = f", guest paused {s.pause_ms} ms" if s.pause_ms is not None else ""
    return f"yes (a restore resumes the guest{paused})"


def backup_details(b: BackupOut) -> None:
    """Every field of a backup."""
    details(
        [
            ("ID", b.id), ("Name", b.name), ("Server", f"{b.server.name} ({b.server.id})"),
            ("Type", b.type), ("Status", b.status), ("Status reason", b.status_reason),
            ("Consistency", b.consistency), ("Size", _mib(b.size_mb)),
            ("Stored", _mib(b.stored_mb)), ("Created", _time(b.created_at)),
            ("Completed", _time(b.completed_at)), ("Description", b.description),
        ]
    )  # fmt: skip


WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
"""A backup policy's ``weekday``: 0 is Monday."""


def policy_details(server_id: int, p: BackupPolicyOut) -> None:
    """A server's backup policy, in words."""
    if not p.enabled:
        schedule = "-"
    elif p.frequency == "weekly":
        schedule = f"weekly, {WEEKDAYS[p.weekday % 7].capitalize()} at {p.hour:02d}:00 UTC"
    else:
        schedule = f"daily at {p.hour:02d}:00 UTC"
    details(
        [
            ("Server", server_id), ("Automatic backups", "enabled" if p.enabled else "disabled"),
            ("Schedule", schedule), ("Frequency", p.frequency), ("Hour (UTC)", p.hour),
            ("Weekday", f"{p.weekday} ({WEEKDAYS[p.weekday % 7]})"), ("Keep", p.keep),
            ("Next backup", _time(p.next_backup_at)),
        ]
    )  # fmt: skip


def snapshot_policy_details(server_id: int, p: SnapshotPolicyOut) -> None:
    """A server's snapshot policy, in words, with the slot it last skipped and why."""
    at = f"{p.hour:02d}:{p.minute:02d} UTC"
    schedule = (
        "-"
        if not p.enabled
        else f"hourly at minute {p.minute:02d}"
        if p.frequency == "hourly"
        else f"weekly, {WEEKDAYS[p.weekday % 7].capitalize()} at {at}"
        if p.frequency == "weekly"
        else f"daily at {at}"
    )
    skipped = p.last_skipped
    details(
        [
            ("Server", server_id),
            ("Automatic snapshots", "enabled" if p.enabled else "disabled"),
            ("Schedule", schedule), ("Frequency", p.frequency), ("Minute", p.minute),
            ("Hour (UTC)", p.hour), ("Weekday", f"{p.weekday} ({WEEKDAYS[p.weekday % 7]})"),
            ("Keep", p.keep), ("Next snapshot", _time(p.next_run_at)),
            ("Last skipped", None if skipped is None else _time(skipped.slot)),
            ("Why skipped", None if skipped is None else skipped.reason),
        ]
    )  # fmt: skip


def note(message: str) -> None:
    """A line for people on stderr (never mixed into stdout's results)."""
    print(message, file=sys.stderr, flush=True)


class Progress:
    """``--wait``'s display: a live spinner with status and elapsed seconds when stderr is a
    terminal, else one plain line per status change (logs and CI stay readable)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.started = time.monotonic()
        self.last: str | None = None
        self.spinner: Status | None = None
        if sys.stderr.isatty():
            console = Console(stderr=True, highlight=False)
            self.spinner = console.status(f"{escape(label)}…")

    def __enter__(self) -> Progress:
        if self.spinner is not None:
            self.spinner.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.spinner is not None:
            self.spinner.stop()

    @property
    def elapsed(self) -> float:
        """Seconds since the wait began."""
        return time.monotonic() - self.started

    def update(self, status: str) -> None:
        """Show the status last seen (called on every poll)."""
        line = f"{self.label}: {status} ({self.elapsed:.0f}s)"
        if self.spinner is not None:
            self.spinner.update(escape(line))
        elif status != self.last:
            note(line)
        self.last = status

    def done(self, status: str) -> None:
        """Say how the wait ended."""
        note(f"{self.label}: {status} after {self.elapsed:.1f}s")
