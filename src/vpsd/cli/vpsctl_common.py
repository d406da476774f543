"""What every vpsctl command shares: options, the client, confirmations and waits."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, Protocol, TypeVar

import typer
from pydantic import BaseModel

from vpsd import __version__
from vpsd.cli.vpsctl_config import ConfigError, resolve
from vpsd.cli.vpsctl_output import ExitCode, OutputFormat, Progress, note
from vpsd.client import Client

DEFAULT_WAIT_TIMEOUT = 600.0


class UsageProblem(Exception):
    """The command cannot run as asked (exit code 2); the message says what to do."""


@dataclass
class GlobalOptions:
    """The root command's ``--url`` and ``--token`` (already merged with the environment)."""

    url: str | None = None
    token: str | None = None
    request_timeout: float = 30.0


ServerIdArg = Annotated[int, typer.Argument(min=1, metavar="SERVER_ID", help="the server's id")]

OutputOption = Annotated[
    OutputFormat,
    typer.Option("--output", "-o", help="table for people, or json: the API's body unchanged"),
]
WaitOption = Annotated[
    bool, typer.Option("--wait", help="wait until the operation is done, showing progress")
]
TimeoutOption = Annotated[
    float,
    typer.Option(
        "--timeout",
        min=0,
        metavar="SECONDS",
        help="how long --wait waits before giving up (exit 5; the work goes on server-side)",
    ),
]
YesOption = Annotated[
    bool, typer.Option("--yes", "-y", help="do not ask for confirmation (needed without a tty)")
]


def global_options(ctx: typer.Context) -> GlobalOptions:
    """The options given to the root command."""
    options = ctx.find_root().obj
    return options if isinstance(options, GlobalOptions) else GlobalOptions()


@contextmanager
def open_client(ctx: typer.Context) -> Iterator[Client]:
    """A client configured by flags, environment or config file; closed on exit."""
    options = global_options(ctx)
    connection = resolve(options.url, options.token)
    try:
        client = Client(
            connection.url,
            connection.token,
            timeout=options.request_timeout,
            user_agent=f"vpsctl/{__version__}",
        )
    except ValueError as error:
        raise ConfigError(str(error)) from None
    with client:
        yield client


def confirm(question: str, action: str, yes: bool) -> None:
    """Go on only if ``--yes`` was given or the person at the terminal answers yes.

    Without a terminal on stdin nobody can answer: refuse (exit 2) rather than guess.
    A "no" exits 1 and changes nothing.
    """
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageProblem(
            f"refusing to {action} without confirmation: stdin is not a terminal "
            "(pass --yes to confirm)"
        )
    if not typer.confirm(question, default=False, err=True):
        note("aborted: nothing was changed")
        raise typer.Exit(ExitCode.FAILED)


class HasStatus(Protocol):
    """An API object with a status: a server or a snapshot."""

    @property
    def status(self) -> str: ...


S = TypeVar("S", bound=HasStatus)


def run_wait(label: str, wait: Callable[[Callable[[S], None]], S]) -> S:
    """Run an SDK wait (given its ``on_progress`` callback) behind a progress display, then
    say how it ended; the SDK's errors (failure, timeout) propagate."""
    with Progress(label) as progress:
        result = wait(lambda obj: progress.update(obj.status))
    progress.done(result.status)
    return result


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+)([smhdw])")


def parse_duration(option: str, text: str) -> timedelta:
    """A duration such as ``90s``, ``30m``, ``24h``, ``7d``, ``2w`` or ``1h30m``."""
    compact = text.strip().lower()
    parts = _DURATION.findall(compact)
    seconds = sum(int(number) * DURATION_UNITS[unit] for number, unit in parts)
    if not parts or "".join(n + u for n, u in parts) != compact or seconds == 0:
        raise UsageProblem(
            f"{option} {text!r}: give a duration such as 30m, 24h, 7d or 1h30m "
            "(s, m, h, d and w are seconds, minutes, hours, days and weeks)"
        )
    return timedelta(seconds=seconds)


def merged(current: BaseModel, **changes: Any) -> dict[str, Any]:
    """A whole policy to ``PUT``: each of ``changes`` that was given (not None), the others
    as ``current`` has them."""
    return {
        key: getattr(current, key) if value is None else value for key, value in changes.items()
    }
