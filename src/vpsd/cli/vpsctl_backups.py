"""``vpsctl backups``: list, show, create, restore, delete, and a server's backup ``policy``."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from vpsd.cli.vpsctl_common import OutputOption, UsageProblem, open_client
from vpsd.cli.vpsctl_output import (
    WEEKDAYS,
    OutputFormat,
    backup_details,
    backups_table,
    note,
    policy_details,
    print_json,
)
from vpsd.cli.vpsctl_recovery_points import RecoveryPointKind, add_commands
from vpsd.client import BackupPolicyOut
from vpsd.schemas import MAX_BACKUPS_KEPT

app = typer.Typer(
    help="Back servers up to the backup storage, restore and delete backups, and set a "
    "server's automatic backups (policy).",
    no_args_is_help=True,
)
add_commands(
    app,
    RecoveryPointKind(
        noun="backup",
        points=lambda client: client.backups,
        table=backups_table,
        details=backup_details,
        list_note=", manual and automatic, with their size and what they stored",
        create_help="Back a server up to the backup storage, apart from its host (at most 10 "
        "manual backups per server).",
    ),
)


class Frequency(StrEnum):
    """``--frequency``."""

    daily = "daily"
    weekly = "weekly"


def parse_weekday(value: str) -> int:
    """``0``-``6`` (0 is Monday) or a day's name, whole or its first three letters."""
    text = value.strip().lower()
    if text.isdigit() and int(text) < len(WEEKDAYS):
        return int(text)
    for number, day in enumerate(WEEKDAYS):
        if len(text) >= 3 and day.startswith(text):
            return number
    raise UsageProblem(f"--weekday {value!r}: give 0-6 (0 is Monday) or a day: mon, tue, ... sun")


@app.command("policy")
def policy(
    ctx: typer.Context,
    server_id: Annotated[int, typer.Argument(min=1, metavar="SERVER_ID", help="the server's id")],
    enabled: Annotated[
        bool | None,
        typer.Option("--enable/--disable", help="turn automatic backups on or off"),
    ] = None,
    frequency: Annotated[
        Frequency | None, typer.Option("--frequency", help="how often to back up")
    ] = None,
    hour: Annotated[
        int | None,
        typer.Option("--hour", min=0, max=23, metavar="H", help="the hour of the day, UTC"),
    ] = None,
    weekday: Annotated[
        str | None,
        typer.Option(
            "--weekday",
            metavar="DAY",
            help="weekly backups' day: mon ... sun, or 0-6 (0 is Monday)",
        ),
    ] = None,
    keep: Annotated[
        int | None,
        typer.Option(
            "--keep",
            min=1,
            max=MAX_BACKUPS_KEPT,
            metavar="N",
            help="automatic backups kept; older ones are deleted",
        ),
    ] = None,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Show a server's backup policy, or change it with the options given.

    What is not given keeps its current value: vpsctl backups policy 7 --enable --keep 14
    """
    day = None if weekday is None else parse_weekday(weekday)
    changes = (enabled, frequency, hour, day, keep)
    with open_client(ctx) as client:
        if all(value is None for value in changes):
            body = client.servers.get_backup_policy_json(server_id)
        else:
            current = client.servers.get_backup_policy(server_id)
            body = client.servers.set_backup_policy_json(
                server_id,
                enabled=current.enabled if enabled is None else enabled,
                frequency=current.frequency if frequency is None else frequency.value,
                hour=current.hour if hour is None else hour,
                weekday=current.weekday if day is None else day,
                keep=current.keep if keep is None else keep,
            )
    shown = BackupPolicyOut.model_validate(body)
    if output is OutputFormat.json:
        print_json(body)
        return
    policy_details(server_id, shown)
    if not shown.enabled and enabled is None and any(value is not None for value in changes):
        note("automatic backups are disabled: pass --enable to turn them on")
