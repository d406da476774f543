"""``vpsctl snapshots``: list, show, create, restore, delete."""

from __future__ import annotations

import typer

from vpsd.cli.vpsctl_output import snapshot_details, snapshots_table
from vpsd.cli.vpsctl_recovery_points import RecoveryPointKind, add_commands

app = typer.Typer(help="Take, inspect, restore and delete snapshots.", no_args_is_help=True)
add_commands(
    app,
    RecoveryPointKind(
        noun="snapshot",
        points=lambda client: client.snapshots,
        table=snapshots_table,
        details=snapshot_details,
        list_note=", with their consistency",
        create_help="Take a point-in-time snapshot of a server (at most 5 per server); with "
        "--memory, of a running server's memory too.",
        memory=True,
    ),
)
