"""``vpsctl snapshots``: list, show, create, restore, delete, ``update`` (name, description,
protection, expiry) and a server's snapshot ``policy``."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

import typer

from vpsd.cli.vpsctl_common import OutputOption, UsageProblem, open_client, parse_duration
from vpsd.cli.vpsctl_output import (
    OutputFormat,
    print_json,
    snapshot_details,
    snapshot_policy_details,
    snapshots_table,
)
from vpsd.cli.vpsctl_policies import EnableOption, HourOption, WeekdayOption, show_or_change
from vpsd.cli.vpsctl_recovery_points import RecoveryPointKind, add_commands
from vpsd.client import SnapshotOut, SnapshotPolicyOut
from vpsd.client.resources import UNCHANGED
from vpsd.schemas import MAX_SNAPSHOTS_KEPT

app = typer.Typer(
    help="Take, inspect, restore, edit and delete snapshots, and set a server's automatic "
    "snapshots (policy).",
    no_args_is_help=True,
)
add_commands(
    app,
    RecoveryPointKind(
        noun="snapshot",
        points=lambda client: client.snapshots,
        table=snapshots_table,
        details=snapshot_details,
        list_note=", with their type, consistency, memory, protection and expiry",
        create_help="Take a point-in-time snapshot of a server (at most 5 per server, manual "
        "and automatic together); with --memory, of a running server's memory too.",
        memory=True,
    ),
)


@app.command("update")
def update(
    ctx: typer.Context,
    snapshot_id: Annotated[
        int, typer.Argument(min=1, metavar="SNAPSHOT_ID", help="the snapshot's id")
    ],
    name: Annotated[
        str | None, typer.Option("--name", "-n", help="a new name: letters, digits, - and _")
    ] = None,
    description: Annotated[
        str | None, typer.Option("--description", "-d", help="a new description")
    ] = None,
    protect: Annotated[
        bool | None,
        typer.Option(
            "--protect/--unprotect",
            help="refuse, or allow again, deleting, expiring and rotating it",
        ),
    ] = None,
    expires_in: Annotated[
        str | None,
        typer.Option(
            "--expires-in",
            metavar="DURATION",
            help="delete it on its own after this long from now: 30m, 24h, 7d, 1h30m",
        ),
    ] = None,
    no_expiry: Annotated[
        bool, typer.Option("--no-expiry", help="keep it until it is deleted")
    ] = False,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Change a snapshot's name, description, protection or expiry; what is not given stays.

    vpsctl snapshots update 7 --protect;  vpsctl snapshots update 7 --expires-in 24h
    """
    if expires_in is not None and no_expiry:
        raise UsageProblem("give --expires-in or --no-expiry, not both")
    expires_at: Any = UNCHANGED
    if expires_in is not None:
        expires_at = datetime.now(UTC) + parse_duration("--expires-in", expires_in)
    elif no_expiry:
        expires_at = None
    if name is None and description is None and protect is None and expires_at is UNCHANGED:
        raise UsageProblem(
            "nothing to change: give --name, --description, --protect or --unprotect, "
            "--expires-in or --no-expiry"
        )
    with open_client(ctx) as client:
        body = client.snapshots.update_json(
            snapshot_id,
            name=name,
            description=UNCHANGED if description is None else description,
            protected=protect,
            expires_at=expires_at,
        )
    if output is OutputFormat.json:
        print_json(body)
    else:
        snapshot_details(SnapshotOut.model_validate(body))


class Frequency(StrEnum):
    """``--frequency``."""

    hourly = "hourly"
    daily = "daily"
    weekly = "weekly"


@app.command("policy")
def policy(
    ctx: typer.Context,
    server_id: Annotated[int, typer.Argument(min=1, metavar="SERVER_ID", help="the server's id")],
    enabled: EnableOption = None,
    frequency: Annotated[
        Frequency | None, typer.Option("--frequency", help="how often to take one")
    ] = None,
    minute: Annotated[
        int | None,
        typer.Option("--minute", min=0, max=59, metavar="M", help="the minute of the hour"),
    ] = None,
    hour: HourOption = None,
    weekday: WeekdayOption = None,
    keep: Annotated[
        int | None,
        typer.Option(
            "--keep",
            min=1,
            max=MAX_SNAPSHOTS_KEPT,
            metavar="N",
            help="automatic snapshots kept; older automatic ones are deleted",
        ),
    ] = None,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Show a server's snapshot policy (and the slot it last skipped, and why), or change it
    with the options given.

    What is not given keeps its current value: vpsctl snapshots policy 7 --enable
    --frequency hourly --minute 15 --keep 3. Automatic snapshots count toward the server's 5;
    when manual and protected ones fill them, a slot is skipped: never is a manual one
    deleted.
    """
    changes = {
        "enabled": enabled, "frequency": None if frequency is None else frequency.value,
        "minute": minute, "hour": hour, "weekday": weekday, "keep": keep,
    }  # fmt: skip
    show_or_change(
        ctx, server_id, changes, read=lambda c: c.servers.get_snapshot_policy_json,
        write=lambda c: c.servers.set_snapshot_policy_json, model=SnapshotPolicyOut,
        show=snapshot_policy_details, output=output, what="automatic snapshots",
    )  # fmt: skip
