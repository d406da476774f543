"""``vpsctl backups``: list, show, create, restore, delete, and a server's backup ``policy``."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from vpsd.cli.vpsctl_common import OutputOption
from vpsd.cli.vpsctl_output import OutputFormat, backup_details, backups_table, policy_details
from vpsd.cli.vpsctl_policies import EnableOption, HourOption, WeekdayOption, show_or_change
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


@app.command("policy")
def policy(
    ctx: typer.Context,
    server_id: Annotated[int, typer.Argument(min=1, metavar="SERVER_ID", help="the server's id")],
    enabled: EnableOption = None,
    frequency: Annotated[
        Frequency | None, typer.Option("--frequency", help="how often to back up")
    ] = None,
    hour: HourOption = None,
    weekday: WeekdayOption = None,
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
    changes = {
        "enabled": enabled, "frequency": None if frequency is None else frequency.value,
        "hour": hour, "weekday": weekday, "keep": keep,
    }  # fmt: skip
    show_or_change(
        ctx, server_id, changes, read=lambda c: c.servers.get_backup_policy_json,
        write=lambda c: c.servers.set_backup_policy_json, model=BackupPolicyOut,
        show=policy_details, output=output, what="automatic backups",
    )  # fmt: skip
