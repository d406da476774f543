"""``vpsctl servers change`` (registered by ``vpsctl_servers``): an update that rolls itself
back, its output shown live.

No ``from __future__ import annotations`` here: typer reads the command's annotations at
definition time.
"""

import json
import shlex
import sys
from typing import Annotated, Any

import typer

from vpsd.cli.vpsctl_common import ServerIdArg, UsageProblem, open_client
from vpsd.cli.vpsctl_output import ExitCode, OutputFormat, note, print_json
from vpsd.console_text import plain
from vpsd.schemas import ChangeOut

VERDICTS = {
    "succeeded": "succeeded: the change is kept",
    "rolled_back": "rolled back: the server is as it was before the change",
    "failed": "failed",
}


HELP = (
    "Run COMMAND as root in the running server's guest between a snapshot and a health "
    "check, and roll the server back to the snapshot if the command or the check fails; the "
    "command's output is shown as it comes. Put COMMAND after '--': vpsctl servers change 7 "
    "--check-port 80 -- apt-get -y upgrade. Exits 0 when the change succeeded, 1 otherwise."
)


def change(
    ctx: typer.Context,
    server_id: ServerIdArg,
    command: Annotated[list[str], typer.Argument(metavar="COMMAND...", help="the command")],
    check_port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="healthy when this port accepts connections"),
    ] = None,
    check_command: Annotated[
        str | None, typer.Option(help="healthy when this command exits 0 in the guest")
    ] = None,
    timeout: Annotated[
        int, typer.Option(min=1, max=86400, help="seconds before the command is killed")
    ] = 900,
    keep_hours: Annotated[
        int, typer.Option(min=0, max=8760, help="hours the snapshot is kept after a success")
    ] = 24,
    output: Annotated[
        OutputFormat, typer.Option("--output", "-o", help="table (live output) or json")
    ] = OutputFormat.table,
) -> None:
    if check_port is not None and check_command is not None:
        raise UsageProblem("give at most one of --check-port and --check-command")
    health: dict[str, Any] = (
        {"tcp_port": check_port}
        if check_port is not None
        else {"command": check_command}
        if check_command is not None
        else {"ssh": True}
    )
    # A list as the shell gave it: joined for sh -c, quoted where it must be.
    text = command[0] if len(command) == 1 else " ".join(_quote(word) for word in command)
    with open_client(ctx) as client:
        started = client.changes.create(
            server_id,
            text,
            health_check=health,
            timeout_seconds=timeout,
            keep_snapshot_hours=keep_hours,
        )
        live = output is OutputFormat.table
        if live:
            note(f"change {started.id} on server {server_id}: snapshot taken first ...")
        ended = client.changes.follow(started.id, on_output=_show_output if live else None)
    if live:
        _verdict(ended)
    else:
        print_json(json.loads(ended.model_dump_json()))
    if ended.status != "succeeded":
        raise typer.Exit(ExitCode.FAILED)


def _quote(word: str) -> str:
    return shlex.quote(word)


def _show_output(text: str) -> None:
    # The guest's output: its escape sequences never reach the user's terminal.
    sys.stdout.write(plain(text))
    sys.stdout.flush()


def _verdict(change: ChangeOut) -> None:
    words = VERDICTS[change.status]
    if change.status_reason:
        words += f" ({change.status_reason})"
    note(f"change {change.id}: {words}")
    if change.health is not None:
        passed = "passed" if change.health.get("passed") else "failed"
        note(f"health check ({change.health.get('check')}) {passed}: {change.health.get('detail')}")
    if change.snapshot_id is not None:
        note(f"snapshot {change.snapshot_id} was taken before it")
